-- No SIZE=, but the message grows past spool.max_message_size: copying stops and the whole
-- message is refused with 552 5.3.4 at end of message (SMFIR_REPLYCODE; the driver checks the
-- log for the code); no file is left.
dofile(luadir .. "/common.lua")
local conn = open()
ok(mt.mailfrom(conn, "<sender@x.example>"), "mailfrom")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt bob")
ok(mt.rcptto(conn, "<carol@other.example>"), "rcpt carol")
ok(mt.header(conn, "Subject", "big"), "header")
ok(mt.eoh(conn), "eoh")
local line = string.rep("x", 98) .. "\r\n"
for i = 1, 30 do
  ok(mt.bodystring(conn, string.rep(line, 10)), "body " .. i)
end
check(spoolcount("tmp") == 0, "temporary file dropped once over the limit")
ok(mt.eom(conn), "eom")
expect_reply(conn, SMFIR_REPLYCODE, "eom")
check(not mt.eom_check(conn, MT_RCPTDELETE, "<bob@alpha.example>"), "bob not deleted")
mt.disconnect(conn)
