-- SIZE= above spool.max_message_size: 552 5.3.4 at RCPT for a client recipient only; other
-- recipients and messages within the limit are not affected.
dofile(luadir .. "/common.lua")
local conn = open()
ok(mt.mailfrom(conn, "<sender@x.example>", "SIZE=20000"), "mailfrom")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt bob")
expect_reply(conn, SMFIR_REPLYCODE, "rcpt bob (552)")
ok(mt.rcptto(conn, "<carol@other.example>"), "rcpt carol")
expect_reply(conn, SMFIR_CONTINUE, "rcpt carol")
ok(mt.abort(conn), "abort")
ok(mt.mailfrom(conn, "<sender@x.example>", "SIZE=5000"), "mailfrom within the limit")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt bob within the limit")
expect_reply(conn, SMFIR_CONTINUE, "rcpt bob within the limit")
mt.disconnect(conn)
