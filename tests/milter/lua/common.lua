-- common.lua: helpers for the dynmx-milter miltertest scripts.
-- Globals from the test driver (miltertest -D): socket, spool, datadir, luadir.
function check(cond, what)
  if not cond then error("FAILED: " .. what) end
end

-- miltertest functions return nil on success and a message on failure.
function ok(r, what)
  if r ~= nil then error("FAILED: " .. what .. ": " .. tostring(r)) end
end

function replyname(r)
  if r == nil then return "nil" end
  return string.char(r)
end

function expect_reply(conn, want, what)
  local got = mt.getreply(conn)
  if got ~= want then
    error("FAILED: " .. what .. ": reply '" .. replyname(got) .. "', expected '" .. replyname(want) .. "'")
  end
end

-- A connection from an SMTP client at 192.0.2.7, as sendmail would announce it.
function open()
  local conn = mt.connect(socket, 100, 0.1)
  check(conn ~= nil, "connect to " .. socket)
  ok(mt.conninfo(conn, "client.example", "192.0.2.7"), "conninfo")
  expect_reply(conn, SMFIR_CONTINUE, "conninfo")
  return conn
end

-- Number of files in a spool state directory (tmp, incoming...).
function spoolcount(state)
  local f = io.popen("ls -A '" .. spool .. "/" .. state .. "' | wc -l")
  local n = tonumber(f:read("*a"))
  f:close()
  return n
end

-- 'E' (SMFIC_BODYEOB): macros sent with end of message; miltertest has no constant for it.
MACRO_EOM = 69
