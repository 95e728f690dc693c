-- An MTA that does not offer SMFIF_DELRCPT: the milter refuses the connection at negotiation
-- (miltertest's arguments: version, protocol options, actions).
dofile(luadir .. "/common.lua")
local conn = mt.connect(socket, 100, 0.1)
check(conn ~= nil, "connect")
local r = mt.negotiate(conn, 6, nil, SMFIF_ADDHDRS)
mt.conninfo(conn, "client.example", "192.0.2.7")
error("FAILED: the milter accepted a negotiation without SMFIF_DELRCPT (" .. tostring(r) .. ")")
