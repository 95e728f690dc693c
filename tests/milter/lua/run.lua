-- run.lua: runs the script named by -D script=NAME and prints why it failed: miltertest itself
-- exits 1 on a Lua error without saying which.
local ok, err = pcall(dofile, luadir .. "/" .. script)
if not ok then
  print("SCRIPT FAILED: " .. tostring(err))
  error(err)
end
