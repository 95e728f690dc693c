divert(-1)
dnl #
dnl # dynmx-relay.m4: relay for dynmx clients while they hold a lease, asked live of dynmx-relaymap.
dnl #
dnl # Include it at the end of your .mc, after the MAILER lines:
dnl #     define(`DYNMX_RELAY_SOCKET', `/run/dynmx/relay.sock')dnl   (optional; this is the default)
dnl #     include(`/usr/share/dynmx/sendmail/dynmx-relay.m4')dnl
dnl #
dnl # What it adds, and nothing else (your access database and relay rules stay as they are):
dnl #  - the socket map "relay" (sendmail sends the map name; dynmx-relaymap answers this one) on
dnl #    DYNMX_RELAY_SOCKET, with -T<TMPF> so that a lookup that fails (server down, or no answer
dnl #    within DYNMX_RELAY_TIMEOUT seconds, default 5) says so instead of reading as "not found";
dnl #  - a Local_check_rcpt: a client whose ${client_addr} is leased (answer OK) may send to any
dnl #    recipient ($# OK). When the lookup fails, the usual checks run, and a recipient they would
dnl #    refuse as a relay (5.7.1) gets 451 4.3.0 instead, so that the client tries again later;
dnl #    mail to local recipients is still accepted. Nothing but an OK answer grants relaying.
dnl # If your .mc has its own Local_check_rcpt, merge the rules below into it by hand.
dnl #
ifdef(`DYNMX_RELAY_SOCKET', `', `define(`DYNMX_RELAY_SOCKET', `/run/dynmx/relay.sock')')
ifdef(`DYNMX_RELAY_TIMEOUT', `', `define(`DYNMX_RELAY_TIMEOUT', `5')')
divert(0)dnl
LOCAL_CONFIG
# relay: dynmx relay leases, asked live of dynmx-relaymap; sendmail sends this map name
Krelay socket -T<TMPF> -d`'DYNMX_RELAY_TIMEOUT local:`'DYNMX_RELAY_SOCKET

LOCAL_RULESETS
SLocal_check_rcpt
# no client address (a local submission): not ours to decide
R$*		$: $1 $| <$&{client_addr}>
R$* $| <>		$@ $1
# only an OK answer grants relaying
R$* $| <$+>		$: $1 $| $(relay $2 $: <NOLEASE> $)
R$* $| OK		$# OK
# lookup failed: run the usual checks now; a relay they refuse becomes a 451
R$* $| $* <TMPF>		$: <TMPF> $1 $| $>"Basic_check_rcpt" $1
R<TMPF> $* $| $#error $- 5.7.1 $*		$#error $@ 4.3.0 $: "451 Relay lease lookup failed; try again later"
R<TMPF> $* $| $#$*		$#$2
R<TMPF> $* $| $*		$@ $1
# not leased: the usual checks decide
R$* $| $*		$@ $1
