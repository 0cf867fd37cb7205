//go:build linux

package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Hiding paths from the pipeline.
//
// A pipeline runs as the worker's own user, so file permissions do not keep
// it from the worker's signing key, configuration or caches. With
// proc.Spec.Hide, the shim starts the pipeline in a new user and mount
// namespace (CLONE_NEWUSER|CLONE_NEWNS, which needs no privilege where
// unprivileged user namespaces are allowed), the worker's uid and gid
// mapped to themselves, so that files keep their owners. In that namespace
// every hidden directory is covered by an empty read-only tmpfs and every
// other hidden file by a bind mount of /dev/null; then every mount is made
// read-only but for the run's directory, the scratch places and
// --writable paths, inside which --read-only paths stay read-only
// (readOnlyRoot), so that nothing the pipeline writes changes what the
// worker's own processes, outside the namespace, read or run:
//
//	shim ── refci __refci-shim --in-ns --hide=P... --writable=P... -- PROGRAM ARGS   (new namespaces)
//	          mounts, drops every capability, then execve(PROGRAM)
//
// The middle step is the shim's binary again (refci, or refci-shim when
// that is the shim; /proc/self/exe, so it works even when the binary lies
// under a hidden path or was replaced since):
// the Go runtime is multi-threaded, so a running shim cannot unshare a
// user namespace itself, while a process cloned into one can mount in it
// before it execs. It gets CAP_SYS_ADMIN and CAP_SETPCAP (valid in the new
// namespace only) as ambient capabilities, mounts, then empties its
// bounding set, locks SECBIT_NOROOT and drops all capabilities before the
// execve, so that not even a worker running as root gives its pipeline the
// power to unmount the covers. (A pipeline that makes a user namespace of
// its own gets capabilities there, but the kernel locks mounts inherited
// from a more privileged namespace: it cannot uncover them.) The process
// that execs is the pipeline's main process: same pid, process group and
// place below the shim as without hiding, so the shim's supervision is
// unchanged.
//
// The middle step reports on fd 3 (close-on-exec) why it failed, if it
// did: a JSON nsSetupError, or nothing (EOF) once the pipeline runs.
//
// Where user namespaces are not available (kernel.unprivileged_userns_clone
// = 0, user.max_user_namespaces = 0, a seccomp filter), the shim runs the
// pipeline without them and says so in its ready report ("unisolated"),
// unless --require-isolation is given: then the pipeline is not started.
// See isolationDecision.

const (
	inNSArg     = "--in-ns"             // internal: the middle step above
	ProbeArg    = "--probe"             // with --in-ns: set up, then exit 0 (proc.CheckIsolation)
	HideArg     = "--hide="             // a path to hide (repeatable)
	KeepArg     = "--keep="             // a path under a hidden one that stays visible (repeatable)
	WritableArg = "--writable="         // a path the pipeline may write (repeatable)
	ReadOnlyArg = "--read-only="        // a path under a writable one that stays read-only (repeatable)
	RequireArg  = "--require-isolation" // do not run the pipeline unhidden
)

// nsPaths is what the middle step does to the pipeline's mount
// namespace: the shim's --hide, --keep, --writable and --read-only
// arguments.
type nsPaths struct {
	hide, keep, writable, readOnly []string
}

// parse takes one argument of the shim into p, if it is one of those.
func (p *nsPaths) parse(a string) bool {
	for _, o := range []struct {
		prefix string
		list   *[]string
	}{{HideArg, &p.hide}, {KeepArg, &p.keep}, {WritableArg, &p.writable}, {ReadOnlyArg, &p.readOnly}} {
		if v, ok := strings.CutPrefix(a, o.prefix); ok && filepath.IsAbs(v) {
			*o.list = append(*o.list, filepath.Clean(v))
			return true
		}
	}
	return false
}

// args is p as the shim's arguments.
func (p nsPaths) args() []string {
	var out []string
	for _, o := range []struct {
		prefix string
		list   []string
	}{{HideArg, p.hide}, {KeepArg, p.keep}, {WritableArg, p.writable}, {ReadOnlyArg, p.readOnly}} {
		for _, v := range o.list {
			out = append(out, o.prefix+v)
		}
	}
	return out
}

// ScratchDirs stay writable for every isolated pipeline, besides its own
// run directory and proc.Spec.Writable: the shared temporary directories,
// and the kernel's interfaces (/dev for its devices and /dev/shm, /proc
// for a pipeline's own user namespaces' id maps), from which no refci
// process takes configuration or code.
var ScratchDirs = []string{"/tmp", "/var/tmp", "/dev", "/proc"}

// kernelReadOnly stay read-only inside the writable /proc: the kernel's
// settings. Their permissions are checked against the uid alone, so the
// pipeline of a worker running as root (uid 0 mapped to itself) could
// otherwise set, say, kernel.core_pattern, and have the kernel run a
// program of its choosing as root outside every namespace.
var kernelReadOnly = []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"}

// nsSetupError is what the middle step reports when it cannot run the
// pipeline.
type nsSetupError struct {
	Stage string `json:"stage"` // "hide": the namespace set-up; "exec": execve of the pipeline
	Errno int    `json:"errno,omitempty"`
	Msg   string `json:"error"`
}

// errIsolationUnavailable marks a start that failed because this system
// does not let the worker create user namespaces.
var errIsolationUnavailable = errors.New("user namespaces are unavailable")

// userNSUnavailable says whether err, from starting a process in new user
// and mount namespaces, means the system does not allow that (rather than
// a problem with the process itself). clone(2) fails with EPERM (a
// seccomp filter; kernel.unprivileged_userns_clone=0), ENOSPC
// (user.max_user_namespaces reached, e.g. 0), EUSERS, or EINVAL (a kernel
// without CONFIG_USER_NS); writing the id maps with EPERM or EACCES.
func userNSUnavailable(err error) bool {
	for _, e := range []syscall.Errno{unix.EPERM, unix.EACCES, unix.ENOSPC, unix.EUSERS, unix.EINVAL, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// isolationDecision decides what the shim does after trying to start the
// pipeline in new namespaces failed with startErr (nil: it did not fail).
// fallback says to run the pipeline without hiding anything (note then
// says why, for status.json); otherwise err, when not nil, is why the
// pipeline is not started.
func isolationDecision(startErr error, require bool) (fallback bool, note string, err error) {
	switch {
	case startErr == nil:
		return false, "", nil
	case !userNSUnavailable(startErr):
		return false, "", startErr
	case require:
		return false, "", fmt.Errorf("%w (%v), and the worker requires isolation (--require-isolation): nothing can be hidden from the pipeline, so it was not started; allow unprivileged user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, the container's seccomp profile) or run the worker without --require-isolation", errIsolationUnavailable, startErr)
	default:
		return true, fmt.Sprintf("%v (%v); the pipeline could read everything its user can, the worker's key included", errIsolationUnavailable, startErr), nil
	}
}

// startHidden starts the middle step (see above) for path and argv, in a
// process group of its own (argv[0] is the path, as in shim.run). It returns its pid and the read end of its
// report pipe; nsSetupResult reads it.
func startHidden(argv []string, ns nsPaths, probe bool) (int, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, nil, err
	}
	defer w.Close()
	args := []string{"refci", Arg, inNSArg}
	if probe {
		args = append(args, ProbeArg)
	}
	args = append(args, ns.args()...)
	if noMountSetattr {
		args = append(args, NoMountSetattrArg)
	}
	args = append(args, "--")
	args = append(args, argv...)
	if probe {
		args = append(args, "-")
	}
	uid, gid := os.Getuid(), os.Getgid()
	attr := &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2, w.Fd()},
		Sys: &syscall.SysProcAttr{
			Setpgid:     true,
			Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWNS,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}},
			AmbientCaps: []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_SETPCAP},
		},
	}
	pid, err := syscall.ForkExec("/proc/self/exe", args, attr)
	if err != nil {
		r.Close()
		return 0, nil, err
	}
	return pid, r, nil
}

// nsSetupResult reads the middle step's report pipe to its end: nil when
// the pipeline runs, else why it does not (a syscall.Errno when execve
// failed, as from a plain start).
func nsSetupResult(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return fmt.Errorf("reading the namespace set-up's report: %w", err)
	}
	if len(b) == 0 {
		return nil
	}
	var e nsSetupError
	if err := json.Unmarshal(b, &e); err != nil {
		return fmt.Errorf("the namespace set-up failed with an unreadable report %q", b)
	}
	if e.Stage == "exec" && e.Errno != 0 {
		return syscall.Errno(e.Errno)
	}
	return fmt.Errorf("cannot hide paths from the pipeline: %s", e.Msg)
}

// nsExec is the middle step: it runs in the new namespaces, covers the
// hidden paths, drops its capabilities and execs the pipeline (path,
// argv). It returns only on failure, after reporting it on fd 3.
func nsExec(ns nsPaths, probe bool, path string, argv []string) int {
	// Capabilities, the bounding set and securebits are per thread: the
	// one that changes them must be the one that calls execve.
	runtime.LockOSThread()
	report := -1
	var st unix.Stat_t
	if unix.Fstat(ReportFD, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		unix.CloseOnExec(ReportFD)
		report = ReportFD
	}
	fail := func(e nsSetupError) int {
		b, _ := json.Marshal(e)
		if report >= 0 {
			unix.Write(report, b)
		} else {
			fmt.Fprintf(os.Stderr, "refci: %s\n", e.Msg)
		}
		return 127
	}
	setupFail := func(err error) int {
		return fail(nsSetupError{Stage: "hide", Msg: err.Error()})
	}
	wd, wdErr := os.Getwd()
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return setupFail(fmt.Errorf("making the mounts private: %w", err))
	}
	if err := hideKeeping(ns.hide, ns.keep); err != nil {
		return setupFail(err)
	}
	if err := readOnlyRoot(slices.Concat(ScratchDirs, ns.writable), slices.Concat(ns.readOnly, kernelReadOnly)); err != nil {
		return setupFail(err)
	}
	// The working directory is still the one of the mounts as they were,
	// read-only now: take it again through the new ones.
	if wdErr == nil {
		if err := unix.Chdir(wd); err != nil {
			return setupFail(fmt.Errorf("entering the working directory %s again: %w", wd, err))
		}
	}
	if err := dropCapabilities(); err != nil {
		return setupFail(err)
	}
	if probe {
		return 0
	}
	delay := 5 * time.Millisecond
	deadline := time.Now().Add(time.Second)
	for {
		err := unix.Exec(path, argv, os.Environ())
		if errors.Is(err, unix.ETXTBSY) && time.Now().Before(deadline) {
			time.Sleep(delay)
			delay *= 2
			continue
		}
		var errno syscall.Errno
		errors.As(err, &errno)
		return fail(nsSetupError{Stage: "exec", Errno: int(errno), Msg: err.Error()})
	}
}

// hideKeeping hides every path in hide, except the paths in keep that lie
// under one of them: those are cloned before the cover goes on (a
// detached copy of their mount, open_tree) and attached again on top of
// it, so that a run's own directory stays usable under a hidden parent
// that holds the directories of other runs. Hidden paths inside another
// hidden path are covered already.
func hideKeeping(hide, keep []string) error {
	under := func(p, dir string) bool {
		rel, err := filepath.Rel(dir, p)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	type kept struct {
		path string
		fd   int
		dir  bool
	}
	var kepts []kept
	defer func() {
		for _, k := range kepts {
			unix.Close(k.fd)
		}
	}()
	for _, k := range keep {
		var st unix.Stat_t
		if err := unix.Stat(k, &st); err != nil {
			return fmt.Errorf("keeping %s visible: %w", k, err)
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, k, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("keeping %s visible (open_tree): %w", k, err)
		}
		kepts = append(kepts, kept{path: k, fd: fd, dir: st.Mode&unix.S_IFMT == unix.S_IFDIR})
	}
	sorted := make([]string, 0, len(hide))
	for _, p := range hide {
		sorted = append(sorted, ResolvePath(p))
	}
	sort.Slice(sorted, func(i, j int) bool { return len(sorted[i]) < len(sorted[j]) })
	var done []string
	for _, p := range sorted {
		if slices.ContainsFunc(done, func(d string) bool { return under(p, d) }) {
			continue
		}
		done = append(done, p)
		var inside []kept
		for _, k := range kepts {
			if under(k.path, p) && k.path != p {
				inside = append(inside, k)
			}
		}
		if len(inside) == 0 {
			if err := hidePath(p); err != nil {
				return err
			}
			continue
		}
		// A writable cover first, to make the mount points in; read-only
		// once the kept paths are attached (their own mounts stay as
		// they were).
		if err := unix.Mount("refci-hidden", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64k,mode=0755"); err != nil {
			return fmt.Errorf("hiding the directory %s (tmpfs over it): %w", p, err)
		}
		for _, k := range inside {
			if k.dir {
				if err := os.MkdirAll(k.path, 0o755); err != nil {
					return fmt.Errorf("keeping %s visible: %w", k.path, err)
				}
			} else {
				if err := os.MkdirAll(filepath.Dir(k.path), 0o755); err != nil {
					return fmt.Errorf("keeping %s visible: %w", k.path, err)
				}
				if err := os.WriteFile(k.path, nil, 0o444); err != nil {
					return fmt.Errorf("keeping %s visible: %w", k.path, err)
				}
			}
			if err := unix.MoveMount(k.fd, "", unix.AT_FDCWD, k.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("keeping %s visible (move_mount): %w", k.path, err)
			}
		}
		if err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("hiding the directory %s (read-only): %w", p, err)
		}
	}
	return nil
}

// readOnlyRoot makes every mount of the namespace read-only, then
// writable again the paths in writable (as they were before: each is
// cloned first, with what is mounted below it, and attached again on top
// of the read-only tree), and read-only again the paths in readOnly that
// lie under a writable one. The deepest rule for a path wins; a path in
// both lists is read-only. Paths that do not exist are skipped, but for a
// read-only path whose nearest existing parent is not writable by a rule
// of its own: that parent becomes read-only, so that the path cannot be
// made.
//
// This is what keeps a pipeline from changing what refci's own processes
// (outside the namespace) do: they take configuration, hooks and code
// from the user's home, git's and ssh's configuration, PATH, the
// executables' directories, none of which a pipeline can write then.
// Device nodes stay usable on a read-only mount.
func readOnlyRoot(writable, readOnly []string) error {
	type rule struct {
		path string
		w    bool
		fd   int
	}
	var rules []rule
	defer func() {
		for _, r := range rules {
			if r.fd >= 0 {
				unix.Close(r.fd)
			}
		}
	}()
	has := func(p string, w bool) bool {
		return slices.ContainsFunc(rules, func(r rule) bool { return r.path == p && r.w == w })
	}
	for _, p := range writable {
		p = ResolvePath(p)
		if has(p, true) {
			continue
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("keeping %s writable (open_tree): %w", p, err)
		}
		rules = append(rules, rule{path: p, w: true, fd: fd})
	}
	for _, p := range readOnly {
		p = ResolvePath(p)
		for {
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err == nil || p == "/" {
				break
			}
			// Not there: its parent, unless a rule makes that one writable.
			p = filepath.Dir(p)
			if has(p, true) {
				p = ""
				break
			}
		}
		if p == "" || p == "/" || has(p, false) {
			continue
		}
		rules = append(rules, rule{path: p, fd: -1})
	}
	// Parents before children; at the same path, read-only last.
	sort.SliceStable(rules, func(i, j int) bool {
		if len(rules[i].path) != len(rules[j].path) {
			return len(rules[i].path) < len(rules[j].path)
		}
		return rules[i].w && !rules[j].w
	})
	if err := readOnlyTree("/"); err != nil {
		return fmt.Errorf("making the file system read-only: %w", err)
	}
	under := func(p, dir string) bool {
		return dir == "/" || strings.HasPrefix(p, dir+"/")
	}
	for i, r := range rules {
		// What the path is before this rule: the nearest rule above it
		// says (none: read-only).
		w := false
		for j := i - 1; j >= 0; j-- {
			if under(r.path, rules[j].path) || (rules[j].path == r.path && !r.w) {
				w = rules[j].w
				break
			}
		}
		if w == r.w {
			continue
		}
		if r.w {
			if err := unix.MoveMount(r.fd, "", unix.AT_FDCWD, r.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("keeping %s writable (move_mount): %w", r.path, err)
			}
			continue
		}
		if err := unix.Mount(r.path, r.path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("making %s read-only (bind mount): %w", r.path, err)
		}
		if err := readOnlyTree(r.path); err != nil {
			return fmt.Errorf("making %s read-only: %w", r.path, err)
		}
	}
	return nil
}

// noMountSetattr, in tests, makes readOnlyTree take the way of kernels
// older than 5.12 (the middle step's --no-mount-setattr).
var noMountSetattr bool

// NoMountSetattrArg is the internal argument that sets noMountSetattr.
const NoMountSetattrArg = "--no-mount-setattr"

// readOnlyTree makes the mount at p and every mount below it read-only:
// one mount_setattr (Linux 5.12), else one remount per mount point,
// keeping the flags the kernel locks in a user namespace (nosuid, nodev,
// noexec, the atime ones).
func readOnlyTree(p string) error {
	if !noMountSetattr {
		err := unix.MountSetattr(unix.AT_FDCWD, p, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		if !errors.Is(err, unix.ENOSYS) {
			if err != nil {
				return fmt.Errorf("mount_setattr: %w", err)
			}
			return nil
		}
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp != p && !(p == "/" || strings.HasPrefix(mp, p+"/")) {
			continue
		}
		flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
		for _, o := range strings.Split(f[5], ",") {
			flags |= map[string]uintptr{"nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
				"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME, "strictatime": unix.MS_STRICTATIME}[o]
		}
		err := unix.Mount("", mp, "", flags, "")
		if err != nil && !errors.Is(err, unix.ENOENT) { // ENOENT: below a hidden path
			return fmt.Errorf("remounting %s read-only: %w", mp, err)
		}
	}
	return nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of a path
// in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// hidePath covers p: an empty read-only tmpfs over a directory, /dev/null
// over anything else. A path that does not exist has nothing to hide.
func hidePath(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("hiding %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		err := unix.Mount("refci-hidden", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,mode=0555")
		if err != nil {
			return fmt.Errorf("hiding the directory %s (tmpfs over it): %w", p, err)
		}
		return nil
	}
	if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("hiding the file %s (/dev/null over it): %w", p, err)
	}
	return nil
}

// Securebits (linux/securebits.h).
const (
	secbitNoroot                 = 1 << 0
	secbitNorootLocked           = 1 << 1
	secbitNoCapAmbientRaise      = 1 << 6
	secbitNoCapAmbientRaiseLocke = 1 << 7
)

// dropCapabilities leaves the calling thread, and what it execs, without
// any capability for good: an empty bounding set, no ambient set, uid 0
// not special (a worker running as root), and nothing effective,
// permitted or inheritable.
func dropCapabilities() error {
	for c := 0; ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the last capability
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, secbitNoroot|secbitNorootLocked|secbitNoCapAmbientRaise|secbitNoCapAmbientRaiseLocke, 0, 0, 0); err != nil {
		return fmt.Errorf("setting securebits: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	var data [2]unix.CapUserData
	if err := unix.Capset(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	return nil
}

// probeMain is `refci __refci-shim --probe`: it starts the namespace
// set-up without a pipeline and prints why it failed, if it did, on fd 3.
func probeMain() int {
	out := os.Stderr
	var st unix.Stat_t
	if unix.Fstat(ReportFD, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		out = os.NewFile(ReportFD, "report")
	}
	pid, r, err := startHidden(nil, nsPaths{}, true)
	if err != nil {
		if userNSUnavailable(err) {
			err = fmt.Errorf("%w (%v)", errIsolationUnavailable, err)
		}
		fmt.Fprintln(out, err)
		return 1
	}
	serr := nsSetupResult(r)
	r.Close()
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	if serr == nil && (!ws.Exited() || ws.ExitStatus() != 0) {
		serr = fmt.Errorf("the namespace set-up ended with %v", ws)
	}
	if serr != nil {
		fmt.Fprintln(out, serr)
		return 1
	}
	return 0
}

// ResolvePath is p with its symbolic links resolved, or p cleaned when
// that fails.
func ResolvePath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}
