-- The spool cannot take the message: 451 4.3.0 at end of message (libmilter sends a reply set
-- with smfi_setreply as SMFIR_REPLYCODE; miltertest cannot show its text, so the driver checks
-- the log and the sendmail test checks the SMTP reply), nothing deleted, no file left.
dofile(luadir .. "/common.lua")
local conn = open()
mt.macro(conn, SMFIC_MAIL, "i", "QUNW")
ok(mt.mailfrom(conn, "<sender@x.example>"), "mailfrom")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt bob")
ok(mt.rcptto(conn, "<carol@other.example>"), "rcpt carol")
ok(mt.header(conn, "Subject", "cannot spool"), "header")
ok(mt.eoh(conn), "eoh")
ok(mt.bodystring(conn, "body\r\n"), "body")
ok(mt.eom(conn), "eom")
expect_reply(conn, SMFIR_REPLYCODE, "eom")
check(not mt.eom_check(conn, MT_RCPTDELETE, "<bob@alpha.example>"), "bob not deleted")
mt.disconnect(conn)
