//go:build linux

package proc

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"refci.dev/refci/worker/shim"
)

// Reaping what a pipeline leaves behind.
//
// A pipeline may start processes that outlive its main process: background
// jobs in its process group, processes that called setsid(), double-forked
// daemons. Run must kill all of them, and only them: a worker runs
// several pipelines at once, and a descendant of another in-flight run must
// survive.
//
// Finding them. The first Run call makes this process a child
// subreaper (prctl PR_SET_CHILD_SUBREAPER, once, process-wide), so a
// process orphaned anywhere below us is reparented to us instead of to
// init. A sweep reads every /proc/<pid>/stat (PPid, process group, session,
// state, start time) and attributes each process by walking its PPid chain
// upwards:
//
//   - reaching the main pid of an in-flight run whose main process has not
//     exited yet: the process belongs to that run (its process tree);
//   - reaching a direct child X of ours that is not a registered main pid:
//     X is an "orphan root" (it, or an ancestor that died, was reparented
//     to us) and the process belongs to whatever X belongs to;
//   - anything else (reaching init, kthreadd, ...) is not ours at all.
//
// An orphan root X is attributed, in this order:
//
//  1. X's process group is our own process group: X is a child started by
//     other code of this program (git, ssh, ...), not a pipeline process.
//     It and its subtree are never touched. (Pipeline mains get a process
//     group of their own, so their descendants only have our group if
//     they deliberately join it with setpgid.)
//  2. X's process group is the group of a registered run (its main pid,
//     even after the main exited: the kernel does not reuse the pid while
//     the group has members; with a shim, also the pipeline's group): that
//     run. This catches plain background jobs and double-forked daemons
//     that did not call setsid.
//  3. X's environment (/proc/X/environ, the environment it was exec'd
//     with) contains REFCI_REAP_TAG=<tag>: the in-flight run with that
//     ReapTag. The tag of this process' own environment (refci running
//     inside a refci pipeline) marks X as ours, never touched. A tag no
//     in-flight run carries (its run is over) attributes nothing: go on.
//  4. One of X's file descriptors is the output pipe of a registered run:
//     that run.
//  5. Otherwise X is ambiguous. A run without a ReapTag kills ambiguous
//     orphans (nothing else can tell them apart); a run with a ReapTag kills
//     them only when it is the only in-flight run. Limit: a daemon that
//     scrubbed its environment, does not hold its run's output pipe, left
//     its process group and was orphaned while two tagged runs were in
//     flight cannot be attributed: it survives until the last in-flight
//     run ends, whose sweep kills it (and counts it among its Leftovers).
//
// Races. Starting a main process (fork, setpgid, exec) and registering its
// pid happen under registry.mu, and so does every sweep, so a sweep never
// sees an unregistered main. Signals go through a pidfd opened before the
// process' start time is checked again, so a pid reused between the scan
// and the kill is never signalled.
//
// Reaping. Zombies reparented to us must be reaped by us (nothing else
// waits for them). A sweep reaps (wait4 on that pid, WNOHANG) every zombie
// that is a direct child of ours, is not the main process of an in-flight
// run (its exec.Cmd waits for it) and is not in our own process group
// (children of other code, whose exec.Cmd will wait for them).
//
// The fast path. A full sweep reads the stat of every process on the
// machine, which costs far more than running a trivial pipeline. Most
// pipelines leave nothing behind, and that can be proved from a handful of
// small files: see nothingLeft. A sweep runs only when nothingLeft cannot
// prove it, and while the main process runs only for a timeout or a
// cancellation.
//
// Limits of being a subreaper: we adopt the orphans of all code of this
// program, not only of pipelines. Children that other code starts in a
// process group of their own (exec.Cmd with Setpgid or Setsid), and
// daemons it spawns (gpg-agent, an ssh ControlMaster), look like pipeline
// orphans: ambiguous ones, killed as described in 5. Orphans of other code
// that stay in our process group are never touched, so when they die
// their zombies stay until this process exits.

// reapTagEnv is the environment variable that carries Spec.ReapTag.
const reapTagEnv = "REFCI_REAP_TAG"

var (
	subreaperOnce sync.Once
	subreaperErr  error
)

// ensureSubreaper makes this process a child subreaper, once. On failure
// (a kernel without it, a seccomp filter) orphans go to init instead and
// only the leftovers still attached to a run's tree or process group are
// found; Run carries on regardless.
func ensureSubreaper() error {
	subreaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			subreaperErr = fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
		}
	})
	return subreaperErr
}

// reapRun is the registry entry of one in-flight Run call. Fields
// other than sent and leftovers are guarded by registry.mu; sent and
// leftovers are only touched by sweeps of the run itself, also under
// registry.mu.
type reapRun struct {
	tag      string
	pipeIno  uint64 // inode of the run's output pipe, 0 if unknown
	mainPid  int    // 0 until started
	mainGone bool   // the main process has been reaped: mainPid is no longer a live process
	// pipelinePgid is, with a shim, the process group of the pipeline's
	// main process (a child of the shim, the run's main process here):
	// orphans in it are the run's (rule 2 below), should the shim die
	// before it killed them. 0 when unknown or without a shim.
	pipelinePgid int

	sent      map[shim.ProcKey]syscall.Signal
	leftovers map[shim.ProcKey]struct{}
}

var registry struct {
	mu   sync.Mutex
	runs map[*reapRun]struct{}
}

// registerLocked adds r to the registry. The caller holds registry.mu.
func (r *reapRun) registerLocked() error {
	if r.tag != "" {
		for o := range registry.runs {
			if o.tag == r.tag {
				return fmt.Errorf("worker: ReapTag %q is already used by another running pipeline", r.tag)
			}
		}
	}
	if registry.runs == nil {
		registry.runs = map[*reapRun]struct{}{}
	}
	registry.runs[r] = struct{}{}
	r.sent = map[shim.ProcKey]syscall.Signal{}
	r.leftovers = map[shim.ProcKey]struct{}{}
	return nil
}

func (r *reapRun) unregister() {
	registry.mu.Lock()
	delete(registry.runs, r)
	registry.mu.Unlock()
}

func (r *reapRun) markMainGone() {
	registry.mu.Lock()
	r.mainGone = true
	registry.mu.Unlock()
}

func (r *reapRun) setPipelinePgid(pgid int) {
	registry.mu.Lock()
	r.pipelinePgid = pgid
	registry.mu.Unlock()
}

// procReads counts the files and directories under /proc that sweeps, the
// fast path and the shim have read (shim.ProcReads, which the /proc
// helpers of package shim count), sweeps the sweeps; tests and benchmarks
// look at them.
var (
	procReads = &shim.ProcReads
	sweeps    atomic.Int64
)

// nothingLeft reports whether it can prove, without a sweep, that no
// process r is responsible for exists: false means "run a sweep", not
// "something is left". It needs r's main process reaped and this process a
// subreaper.
//
// Why it holds. With the main process reaped, every live descendant of the
// run has been reparented (to us, the nearest subreaper, or to a subreaper
// below us), so the chain of its ancestors ends in a direct child of ours.
// nothingLeft requires (a) r's process groups (the main's, and with a
// shim the pipeline's) to be empty: kill(-pgid, 0) fails with ESRCH; and
// (b) every direct child of ours to be the live main process of another
// in-flight run (whose tree a sweep attributes to that run) or a member of
// our own process group (a child of other code, which a sweep never
// touches, nor its subtree: rule 1). Then a sweep would find nothing of r
// either.
//
// Reading the children lists is not atomic: the kernel walks each list
// one entry per step, and when an entry it returned leaves the list
// (reaped) before the next step, it may skip the entry after it. So every
// child it returned must still exist afterwards (getpgid succeeds), which
// proves no entry left during the walk. A process of r that is a direct
// child cannot leave by itself: only a sweep reaps those, and sweeps hold
// registry.mu, as does nothingLeft. Children also move between the
// threads' lists when a thread exits, so the set of threads must be the
// same before and after the reads. New children (forks of other code,
// orphans reparented during the walk) do not matter: none can be r's when
// r had none before.
func (r *reapRun) nothingLeft() bool {
	if ensureSubreaper() != nil {
		return false
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if !r.mainGone || r.mainPid <= 0 {
		return false
	}
	for _, pg := range []int{r.mainPid, r.pipelinePgid} {
		if pg > 0 && unix.Kill(-pg, 0) != unix.ESRCH {
			return false
		}
	}
	self := os.Getpid()
	kids, tids, err := shim.ReadProcChildren(self)
	if err != nil {
		return false
	}
	if after, err := shim.ReadTids("/proc/" + strconv.Itoa(self) + "/task/"); err != nil || !slices.Equal(tids, after) {
		return false
	}
	selfPgrp := unix.Getpgrp()
	for _, k := range kids {
		pg, err := unix.Getpgid(k)
		if err != nil {
			return false // gone since the walk returned it: the walk may have skipped a sibling
		}
		if pg == selfPgrp {
			continue
		}
		live := false
		for o := range registry.runs {
			if o != r && o.mainPid == k && !o.mainGone {
				live = true
				break
			}
		}
		if !live {
			return false
		}
	}
	return true
}

// readReapTag returns the value of REFCI_REAP_TAG in the environment the
// process was exec'd with.
func readReapTag(pid int) (string, bool) {
	procReads.Add(1)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return "", false
	}
	prefix := []byte(reapTagEnv + "=")
	tag, found := "", false
	for _, kv := range bytes.Split(b, []byte{0}) {
		if bytes.HasPrefix(kv, prefix) {
			tag, found = string(kv[len(prefix):]), true // the last one wins, as in getenv after dedup
		}
	}
	return tag, found
}

// pipeInodes calls fn with the inode of every pipe the process has open,
// until fn returns true.
func pipeInodes(pid int, fn func(ino uint64) bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	procReads.Add(1)
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		l, err := os.Readlink(dir + n)
		if err != nil || !strings.HasPrefix(l, "pipe:[") || !strings.HasSuffix(l, "]") {
			continue
		}
		ino, err := strconv.ParseUint(l[len("pipe:["):len(l)-1], 10, 64)
		if err == nil && fn(ino) {
			return
		}
	}
}

type ownerKind int

const (
	ownNone      ownerKind = iota // not ours: foreign, or not below us at all
	ownRun                        // belongs to run
	ownAmbiguous                  // an orphan nothing attributes
)

type owner struct {
	kind ownerKind
	run  *reapRun
}

// procScan is one scan of /proc plus the registry, under registry.mu.
type procScan struct {
	self, selfPgrp int
	ownTag         string // REFCI_REAP_TAG of this process, if it has one
	procs          map[int]*shim.ProcInfo
	liveMains      map[int]*reapRun // main pid → run, mains not reaped yet
	goneMains      map[int]*reapRun // process group → run: mains already reaped, and pipeline groups under a shim
	tags           map[string]*reapRun
	pipes          map[uint64]*reapRun
	nRuns          int
	memo           map[int]attribution
}

// scanProcs scans /proc. The caller holds registry.mu.
func scanProcs() (*procScan, error) {
	procs, err := shim.ListProcs()
	if err != nil {
		return nil, err
	}
	s := &procScan{
		self:      os.Getpid(),
		selfPgrp:  unix.Getpgrp(),
		ownTag:    os.Getenv(reapTagEnv),
		procs:     procs,
		liveMains: map[int]*reapRun{},
		goneMains: map[int]*reapRun{},
		tags:      map[string]*reapRun{},
		pipes:     map[uint64]*reapRun{},
		nRuns:     len(registry.runs),
		memo:      make(map[int]attribution, len(procs)),
	}
	for r := range registry.runs {
		if r.mainPid > 0 {
			if r.mainGone {
				s.goneMains[r.mainPid] = r
			} else {
				s.liveMains[r.mainPid] = r
			}
		}
		if r.pipelinePgid > 0 {
			s.goneMains[r.pipelinePgid] = r
		}
		if r.tag != "" {
			s.tags[r.tag] = r
		}
		if r.pipeIno != 0 {
			s.pipes[r.pipeIno] = r
		}
	}
	return s, nil
}

// attribution says who owns a process and how deep below its run's main
// process or its orphan root it is (0 for those themselves).
type attribution struct {
	owner owner
	depth int
}

func (s *procScan) attribute(pid int) attribution {
	if a, ok := s.memo[pid]; ok {
		return a
	}
	// Walk up the chain iteratively, then fill the memo on the way back,
	// so deep chains cost nothing special.
	var chain []int
	var end attribution // of the process the walk stopped at
	endInChain := false
	for cur := pid; ; {
		if m, ok := s.memo[cur]; ok {
			end = m
			break
		}
		p := s.procs[cur]
		if p == nil || cur == s.self || cur <= 1 || len(chain) > len(s.procs) {
			end = attribution{} // not below us (a cycle cannot happen; be safe anyway)
			break
		}
		chain = append(chain, cur)
		if r := s.liveMains[cur]; r != nil {
			end, endInChain = attribution{owner{ownRun, r}, 0}, true
			break
		}
		if p.PPid == s.self {
			end, endInChain = attribution{s.classifyOrphan(p), 0}, true
			break
		}
		cur = p.PPid
	}
	i, d := len(chain)-1, end.depth
	if endInChain {
		s.memo[chain[i]] = end
		i--
	}
	for ; i >= 0; i-- {
		d++
		s.memo[chain[i]] = attribution{end.owner, d}
	}
	return s.memo[pid]
}

func (s *procScan) classifyOrphan(p *shim.ProcInfo) owner {
	if p.Pgrp == s.selfPgrp {
		return owner{}
	}
	if r := s.liveMains[p.Pgrp]; r != nil {
		return owner{ownRun, r}
	}
	if r := s.goneMains[p.Pgrp]; r != nil {
		return owner{ownRun, r}
	}
	if p.State == 'Z' {
		return owner{ownAmbiguous, nil} // no environment or files left to look at; reaped anyway
	}
	if tag, ok := readReapTag(p.Pid); ok && tag != "" {
		if r := s.tags[tag]; r != nil {
			return owner{ownRun, r}
		}
		if tag == s.ownTag {
			return owner{} // inherited from our own environment (refci running under refci): ours, not a pipeline's
		}
		// A run that is over: treat it like an untagged orphan.
	}
	var found *reapRun
	if len(s.pipes) > 0 {
		pipeInodes(p.Pid, func(ino uint64) bool {
			found = s.pipes[ino]
			return found != nil
		})
	}
	if found != nil {
		return owner{ownRun, found}
	}
	return owner{ownAmbiguous, nil}
}

// mine says whether run r is responsible for killing a process with owner o.
func (s *procScan) mine(r *reapRun, o owner) bool {
	switch o.kind {
	case ownRun:
		return o.run == r
	case ownAmbiguous:
		return r.tag == "" || s.nRuns == 1
	}
	return false
}

// sweep scans /proc once. It sends sig to every live process r is
// responsible for that has not been sent sig (or SIGKILL) yet, parents
// before their children (so r's main process is signalled first and ends
// by the signal rather than by noticing a child's death, and a shell is
// gone before it could report its children's deaths on the output),
// reaps every zombie reparented to us (see the design note above) and
// returns how many processes r is responsible for were present (live or
// zombie, r's main process included while it has not been reaped).
// Processes signalled after r's main process was reaped count as
// leftovers.
func (r *reapRun) sweep(sig syscall.Signal) (remaining int, err error) {
	sweeps.Add(1)
	registry.mu.Lock()
	defer registry.mu.Unlock()
	s, err := scanProcs()
	if err != nil {
		return 0, fmt.Errorf("worker: scanning processes: %w", err)
	}
	type target struct {
		p     *shim.ProcInfo
		depth int
	}
	var targets []target
	for pid, p := range s.procs {
		if pid == s.self {
			continue
		}
		if p.State == 'Z' && p.PPid == s.self && s.liveMains[pid] == nil && p.Pgrp != s.selfPgrp {
			var ws unix.WaitStatus
			if wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && wpid == pid {
				continue // reaped: gone
			}
		}
		a := s.attribute(pid)
		if !s.mine(r, a.owner) {
			continue
		}
		remaining++
		if p.State == 'Z' {
			continue // dead; its parent is still ours and alive, or it is reaped on the next sweep
		}
		if prev, ok := r.sent[p.Key()]; ok && (prev == sig || prev == syscall.SIGKILL) {
			continue
		}
		targets = append(targets, target{p, a.depth})
	}
	slices.SortFunc(targets, func(a, b target) int { return cmp.Compare(a.depth, b.depth) })
	var firstErr error
	for _, t := range targets {
		if err := signalProc(t.p, sig); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("worker: signalling pid %d: %w", t.p.Pid, err)
			}
			continue
		}
		r.sent[t.p.Key()] = sig
		if r.mainGone {
			r.leftovers[t.p.Key()] = struct{}{}
		}
	}
	return remaining, firstErr
}

// signalProc sends sig to p if p is still the process that was scanned
// (same pid and start time). A process that is already gone is not an
// error.
func signalProc(p *shim.ProcInfo, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(p.Pid, 0)
	switch {
	case err == nil:
		defer unix.Close(fd)
	case errors.Is(err, unix.ESRCH):
		return nil
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
		fd = -1 // pidfd unavailable (kernel < 5.3, seccomp): fall back to kill
	default:
		return err
	}
	cur, err := shim.ReadStat(p.Pid)
	if err != nil || cur.Start != p.Start {
		return nil // gone, or the pid now names another process
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, unix.Signal(sig), nil, 0)
	} else {
		err = unix.Kill(p.Pid, unix.Signal(sig))
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
