-- stop_in_body.lua: a message whose body is still arriving when dynmx-milter is stopped. The
-- script sends body chunks until the milter answers no more (it has exited); the test that runs
-- it sends SIGTERM once the temporary file exists and then checks that nothing is left of it.
dofile(luadir .. "/common.lua")
local conn = open()
ok(mt.mailfrom(conn, "<sender@x.example>"), "mailfrom")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt bob")
ok(mt.header(conn, "Subject", "cut by a stop"), "header")
ok(mt.eoh(conn), "eoh")
for i = 1, 1200 do
  -- miltertest returns a message or raises an error when the milter has gone
  local called, r = pcall(mt.bodystring, conn, "line " .. i .. " of a message never finished\r\n")
  if not called or r ~= nil then
    print("milter gone after " .. i .. " body chunk(s): " .. tostring(r))
    return
  end
  os.execute("sleep 0.05")
end
error("FAILED: the milter still answered after every chunk")
