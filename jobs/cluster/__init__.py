"""`modresnet cluster up|status|down`: a real multi-node Ray cluster on this machine.

One head (`ray start --head`, dashboard + Jobs API on 127.0.0.1, 0 CPUs by default) and N worker
raylets (`ray start --address ...`), all on loopback, token auth on. Everything a cluster owns
lives under a state dir, `$MODRESNET_HOME/cluster` (default ~/.modresnet/cluster):

    state.json     ports, addresses, the processes it started, temp dir (state.py)
    auth_token     the generated token, mode 0600 (RAY_AUTH_TOKEN_PATH for every process)
    logs/          output of each `ray start`

and, for Prometheus, `$MODRESNET_HOME/prometheus/targets/modresnet-cluster.json`: each node's
metrics export port as a file_sd target file (prometheus.py).

Ray's own files go to a distinct short `--temp-dir` per cluster (/tmp/mrray-XXXXXXXX, short
because Ray's unix socket paths must stay under 108 bytes); each worker node gets its own
`w<i>/` inside it, as nodes on separate machines would (`start.node_temp_dir`). Every port is
chosen free, so two clusters with different MODRESNET_HOMEs (or a test cluster next to a
developer's) never collide.

`ray start` daemonizes: it exits and leaves its processes behind. Each `ray start` runs in a new
session (setsid), whose id every process it spawns inherits. `up` records the boot id, each
`ray start`'s (pid, start time), every process it left (start.py) and, once up, every process's
(pid, start time). `down` stops only processes proven ours (procs.py: a recorded pid whose start
time still matches, a session still provably ours, their descendants; our uid only; nothing
after a reboot; never by command line) - by pid, SIGTERM then SIGKILL, re-checking each pid's
start time and uid right before signalling. Never `ray stop`, which kills every Ray on the
host. It removes the temp dir only once state.json proves it one `up` made (state.py). `up` and
`down` hold a lock in the state dir, so two of them never interleave (lifecycle.py).

The modules: state.py (the cluster's identity on disk), procs.py (which processes are ours,
stopping them), start.py (ports, environment, `ray start`), lifecycle.py (up, status, down),
prometheus.py (the Prometheus target file, also `modresnet serve`'s), commands.py (the
`modresnet cluster` commands).
"""
