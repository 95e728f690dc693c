-- One recipient at gamma.example; `expect` says whether it must be captured ("capture") or passed
-- on ("pass"). Used around reloads.
dofile(luadir .. "/common.lua")
local conn = open()
ok(mt.mailfrom(conn, "<sender@x.example>"), "mailfrom")
ok(mt.rcptto(conn, "<gina@gamma.example>"), "rcpt gina")
ok(mt.data(conn), "data")
if expect == "capture" then
  expect_reply(conn, SMFIR_CONTINUE, "data (captured)")
  ok(mt.header(conn, "Subject", "probe"), "header")
  ok(mt.eoh(conn), "eoh")
  ok(mt.bodystring(conn, "probe\r\n"), "body")
  ok(mt.eom(conn), "eom")
  expect_reply(conn, SMFIR_DISCARD, "eom (captured)")
else
  expect_reply(conn, SMFIR_ACCEPT, "data (not a client: nothing more to see)")
end
mt.disconnect(conn)
