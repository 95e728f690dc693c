-- stop_in_stream.lua: complete messages, one after the other on fresh connections, until
-- dynmx-milter stops answering; one of them is likely in its end of message when the stop comes.
-- Each body is "message N\r\n" repeated, so that the test can check a spooled copy is whole.
dofile(luadir .. "/common.lua")
for n = 1, 100000 do
  local connected, conn = pcall(mt.connect, socket, 1, 0.1)
  if not connected or conn == nil then
    print("milter gone after " .. (n - 1) .. " message(s)")
    return
  end
  local steps = {
    function() return mt.conninfo(conn, "client.example", "192.0.2.7") end,
    function() return mt.mailfrom(conn, "<sender@x.example>") end,
    function() return mt.rcptto(conn, "<bob@alpha.example>") end,
    function() return mt.header(conn, "Subject", "stream " .. n) end,
    function() return mt.eoh(conn) end,
    function() return mt.bodystring(conn, string.rep("message " .. n .. "\r\n", 2000)) end,
    function() return mt.eom(conn) end,
  }
  for _, step in ipairs(steps) do
    local called, r = pcall(step)
    if not called or r ~= nil then
      print("milter gone during message " .. n .. ": " .. tostring(r))
      return
    end
  end
  pcall(mt.disconnect, conn)
end
