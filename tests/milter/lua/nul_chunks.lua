-- A body in many chunks holding NULs, CR and LF split across chunk boundaries: the spool keeps it
-- byte for byte (the driver compares). Chunks come from files because mt.bodystring stops at NUL.
dofile(luadir .. "/common.lua")
local conn = open()
mt.macro(conn, SMFIC_MAIL, "i", "QNUL")
ok(mt.mailfrom(conn, "<sender@x.example>", "BODY=BINARYMIME"), "mailfrom")
ok(mt.rcptto(conn, "<bob@alpha.example>"), "rcpt")
ok(mt.header(conn, "Subject", "binary"), "header")
ok(mt.eoh(conn), "eoh")
local n = tonumber(chunks)
for i = 1, n do
  ok(mt.bodyfile(conn, datadir .. "/chunk" .. i), "body chunk " .. i)
end
ok(mt.eom(conn), "eom")
expect_reply(conn, SMFIR_DISCARD, "eom")
mt.disconnect(conn)
