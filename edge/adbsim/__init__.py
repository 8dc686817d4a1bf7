"""A simulated Android phone that speaks adb's device-side protocol on a loopback TCP port.

The REAL adb server attaches it with `adb connect 127.0.0.1:PORT`, exactly as it attaches
a phone in wireless-debugging mode. Everything the host sees goes through adb's transport
(AOSP packages/modules/adb protocol.txt): 24-byte message headers CNXN / AUTH / OPEN /
OKAY / WRTE / CLSE, one OKAY per WRTE (no delayed-ack feature advertised), and these
services:

- `shell:CMD` and `exec:CMD` (v1, raw: no shell_v2 feature is advertised, so the host uses
  the old protocol; stdout and stderr are one stream; stdin arrives as WRTE packets);
- `sync:` (SYNC.TXT: STAT / LIST / SEND+DATA+DONE / RECV / QUIT; v1 only).

Shell commands are NOT run by a shell of this machine. `Shell` (shell.py) is a tiny
interpreter that tokenizes like POSIX sh (quotes, backslashes, `;` `&&` `||` `|`,
redirections, `$?`, `$VAR`, `$(...)` and backticks, field splitting, globbing) and dispatches
to builtins (commands.py) that act on the phone's files in a temporary directory. Because it *does* run command
substitutions and `;`-separated commands the way a phone's sh would (inside the sandbox),
a quoting bug on the host shows up as a stray file or a wrong name here.

Answers come from fixtures in the real output formats: `edge/adbsim/fixtures/<phone>/`
holds one file per `edge.readings.COMMANDS` entry; such a command gets its fixture
verbatim; `getprop KEY` reads getprop.txt, `cat /proc/meminfo` meminfo.txt, `df` is
computed from the simulated storage.

Faults: `drop_after` (close the TCP connection once that many pushed bytes have arrived),
`capacity` / `df_free` (storage full, or a df that claims more than there is),
`unauthorized` (send AUTH, never accept the key), `throttle_bps` (link speed).

    with AdbSim(fixture="pixel_7") as sim:     # listens on 127.0.0.1:<free port>
        subprocess.run(["adb", "connect", sim.serial])
        ...
        sim.files("/sdcard/Download")             # what arrived
"""

from .phone import Phone, ShellError
from .server import AdbServer, AdbSim
from .shell import Shell

__all__ = ["AdbServer", "AdbSim", "Phone", "Shell", "ShellError"]
