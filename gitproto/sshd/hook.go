package sshd

// The hook channel. receive-pack runs with core.hooksPath pointing at a
// directory the server wrote and owns, so a repository cannot bring its
// own hooks. Each hook script execs the hook client (package hookclient:
// the light cmd/refci-hook when Config.HookClient names it, else the
// server's own binary with HookArg), which sends what git gave it to the
// running server over a Unix socket in the server's private state
// directory, together with the per-session random token the server put
// into the environment of that receive-pack only, and prints the
// server's answer.
//
//	pre-receive   all updates and the push options: Config.CheckPushOptions
//	              (only when the push carries options; the script checks)
//	update        one ref: Policy.AllowRef, which may read the pushed objects
//	              (still in quarantine); a refusal names the ref in the push report;
//	              an allowed one is told to Config.OnAllowed, a hint
//	post-receive  the applied updates: Config.OnReceive
//
// A token is valid only while its receive-pack runs. The post-receive
// report is not believed blindly: each update's new value is checked
// against the repository's ref before OnReceive hears of it.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/gitproto/sshd/hookclient"
	"refci.dev/refci/lightbin"
)

// HookArg is the hidden first argument that runs the hook client; the
// program's main must call HookMain(os.Args[2:]) for it before anything
// else.
const HookArg = "__hook"

// HookMain is the hook client (package hookclient) with the process's
// environment and streams: args are the hook's name and git's arguments
// to it. It returns the exit code for the hook.
func HookMain(args []string) int {
	return hookclient.Main(args, os.Getenv, os.Stdin, os.Stderr)
}

// HookClientName is the light hook client's executable (cmd/refci-hook),
// looked for beside the refci executable.
const HookClientName = "refci-hook"

// hookClientPackage is the import path cmd/refci-hook is built from.
const hookClientPackage = "refci.dev/refci/cmd/refci-hook"

// ChooseHookClient picks the light hook client for a server whose own
// executable is self (Config.HookClient): refci-hook beside self when it
// is an executable file built from cmd/refci-hook of the same build as
// the running program (its build information is read from the file;
// nothing is run), else "". note, when not empty, says why a refci-hook
// that is there was refused; it is empty when there is none, or it was
// chosen. Servers call it once at start.
func ChooseHookClient(self string) (path, note string) {
	light, note := lightbin.Beside(self, HookClientName)
	if light == "" {
		return "", note
	}
	if ok, note := lightbin.OfThisBuild(light, hookClientPackage); !ok {
		return "", note
	}
	return light, ""
}

// writeHooks writes the hook scripts into stateDir/hooks, each exec'ing
// the hook client: light (cmd/refci-hook) while it is an executable file,
// when not empty, else command.
func writeHooks(stateDir, light string, command []string) (string, error) {
	dir := filepath.Join(stateDir, "hooks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("sshd: hooks: %w", err)
	}
	quote := func(c string) string { return "'" + strings.ReplaceAll(c, "'", `'\''`) + "'" }
	quoted := make([]string, len(command))
	for i, c := range command {
		quoted[i] = quote(c)
	}
	for _, h := range []string{"pre-receive", "update", "post-receive"} {
		script := "#!/bin/sh\n# written by refci serve; rewritten at each start\n"
		if h == "pre-receive" {
			// Only push options, and a push that creates the repository,
			// need a look before the refs are updated.
			script += "[ \"${GIT_PUSH_OPTION_COUNT:-0}\" = 0 ] && [ -z \"${" + hookclient.EnvCreate + ":-}\" ] && exit 0\n"
		}
		if light != "" {
			// The light client when it is still there (an upgrade may
			// have removed it), else the server's own binary.
			script += "[ -x " + quote(light) + " ] && exec " + quote(light) + " " + h + " \"$@\"\n"
		}
		script += "exec " + strings.Join(quoted, " ") + " " + h + " \"$@\"\n"
		p := filepath.Join(dir, h)
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(script), 0o700); err != nil {
			return "", fmt.Errorf("sshd: hooks: %w", err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return "", fmt.Errorf("sshd: hooks: %w", err)
		}
	}
	return dir, nil
}

// hookSession is one running receive-pack.
type hookSession struct {
	token string
	id    Identity
	repo  string
	path  string // the repository receive-pack runs in

	// final, when set, is where the repository this push creates goes
	// (path is a temporary one until post-receive publishes it); missing
	// is the message refusing a push that would not create it.
	final, missing string

	mu      sync.Mutex
	options []string    // the push's options, as pre-receive heard them
	moved   bool        // path was published to final
	updated []string    // refs applied, as post-receive reported them
	refused []string    // refs AllowRef refused
	allowed []RefUpdate // the updates AllowRef allowed, in order
}

// published reports whether the push created its repository.
func (h *hookSession) published() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.moved
}

// repoPath is the repository's directory now.
func (h *hookSession) repoPath() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.moved {
		return h.final
	}
	return h.path
}

// createsRepo reports whether ups may create a repository: they make a
// branch or a tag, not only refs/ci/* (a request pushed to a mistyped
// name must not make a new repository).
func createsRepo(ups []RefUpdate) bool {
	for _, u := range ups {
		if !u.Deleting() && (strings.HasPrefix(u.Name, "refs/heads/") || strings.HasPrefix(u.Name, "refs/tags/")) {
			return true
		}
	}
	return false
}

func (h *hookSession) refs() (updated, refused []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return sortedCopy(h.updated), sortedCopy(h.refused)
}

type hookServer struct {
	srv  *Server
	ln   net.Listener
	path string
	dir  string // a temporary directory to remove, when the socket lives outside the state dir

	mu       sync.Mutex
	sessions map[string]*hookSession
	closed   bool
	wg       sync.WaitGroup
}

// startHookServer listens on stateDir/run/hook.sock (or, when that path
// is too long for a Unix socket, in a private temporary directory).
func startHookServer(stateDir string, srv *Server) (*hookServer, error) {
	hs := &hookServer{srv: srv, sessions: map[string]*hookSession{}}
	dir := filepath.Join(stateDir, "run")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sshd: hook socket: %w", err)
	}
	hs.path = filepath.Join(dir, "hook.sock")
	if len(hs.path) > 100 {
		tmp, err := os.MkdirTemp("", "refci-serve-")
		if err != nil {
			return nil, fmt.Errorf("sshd: hook socket: %w", err)
		}
		hs.dir, hs.path = tmp, filepath.Join(tmp, "hook.sock")
	}
	os.Remove(hs.path) // a socket left by a killed server
	ln, err := net.Listen("unix", hs.path)
	if err != nil {
		return nil, fmt.Errorf("sshd: hook socket: %w", err)
	}
	os.Chmod(hs.path, 0o600)
	hs.ln = ln
	go hs.accept()
	return hs, nil
}

func (hs *hookServer) close() {
	hs.mu.Lock()
	if hs.closed {
		hs.mu.Unlock()
		return
	}
	hs.closed = true
	hs.mu.Unlock()
	hs.ln.Close()
	hs.wg.Wait()
	os.Remove(hs.path)
	if hs.dir != "" {
		os.RemoveAll(hs.dir)
	}
}

func (hs *hookServer) register(id Identity, repo, path string) *hookSession {
	s := &hookSession{token: newToken(), id: id, repo: repo, path: path}
	hs.mu.Lock()
	hs.sessions[s.token] = s
	hs.mu.Unlock()
	return s
}

func (hs *hookServer) unregister(s *hookSession) {
	hs.mu.Lock()
	delete(hs.sessions, s.token)
	hs.mu.Unlock()
}

func (hs *hookServer) accept() {
	for {
		c, err := hs.ln.Accept()
		if err != nil {
			return
		}
		hs.wg.Add(1)
		go func() {
			defer hs.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(hookclient.Timeout))
			var req hookclient.Request
			if err := json.NewDecoder(io.LimitReader(c, hookclient.MaxRequest)).Decode(&req); err != nil {
				return
			}
			resp := hs.answer(&req)
			json.NewEncoder(c).Encode(resp)
		}()
	}
}

func (hs *hookServer) answer(req *hookclient.Request) hookclient.Response {
	hs.mu.Lock()
	s := hs.sessions[req.Token]
	hs.mu.Unlock()
	if s == nil || req.Token == "" {
		return hookclient.Response{Message: "refci: refused: this push session is not known to the server"}
	}
	srv := hs.srv
	switch req.Hook {
	case "pre-receive":
		// git gives the options to pre- and post-receive only; the
		// script asks the server whenever there are some.
		s.mu.Lock()
		s.options = append([]string(nil), req.Options...)
		s.mu.Unlock()
		ups, err := parseUpdates(req.Stdin)
		if err != nil {
			return hookclient.Response{Message: "refci: " + err.Error()}
		}
		if s.final != "" && !createsRepo(ups) {
			return hookclient.Response{Message: "refci: push refused: " + s.missing}
		}
		if s.final != "" {
			if _, exists, _ := repoPath(srv.cfg.Root, s.repo); exists {
				return hookclient.Response{Message: "refci: push refused: repository " + s.repo + " was created by another push meanwhile; push again"}
			}
		}
		if srv.cfg.CheckPushOptions == nil || len(req.Options) == 0 {
			return hookclient.Response{OK: true}
		}
		if err := srv.cfg.CheckPushOptions(s.id, s.repo, ups, req.Options); err != nil {
			return hookclient.Response{Message: "refci: push refused: " + err.Error()}
		}
		return hookclient.Response{OK: true}
	case "update":
		if len(req.Args) != 3 {
			return hookclient.Response{Message: "refci: update hook: want 3 arguments"}
		}
		u := RefUpdate{Name: req.Args[0], Old: req.Args[1], New: req.Args[2]}
		p := &Push{ID: s.id, Repo: s.repo, Path: s.path}
		s.mu.Lock()
		p.Earlier = append([]RefUpdate(nil), s.allowed...)
		s.mu.Unlock()
		q, err := quarantineDir(s.path, req.Quarantine)
		if err != nil {
			return hookclient.Response{Message: "refci: refused " + u.Name + ": " + err.Error()}
		}
		p.quarantine = q
		err = srv.cfg.Policy.AllowRef(p, u)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.refused = append(s.refused, u.Name)
			return hookclient.Response{Message: "refci: refused " + u.Name + ": " + err.Error()}
		}
		s.allowed = append(s.allowed, u)
		if srv.cfg.OnAllowed != nil && s.final == "" {
			srv.cfg.OnAllowed(s.path, u, s.options)
		}
		return hookclient.Response{OK: true}
	case "post-receive":
		ups, err := parseUpdates(req.Stdin)
		if err != nil {
			return hookclient.Response{OK: true, Message: "refci: " + err.Error()}
		}
		ups = s.confirm(ups)
		if len(ups) == 0 {
			return hookclient.Response{OK: true}
		}
		fixHead(s.path, ups)
		s.mu.Lock()
		for _, u := range ups {
			s.updated = append(s.updated, u.Name)
		}
		s.mu.Unlock()
		created := ""
		if s.final != "" {
			// The refs are in place: the new repository may be served.
			if err := srv.publish(s.repo, s.path, s.final); err != nil {
				srv.log.Error("create repository", "repo", s.repo, "err", err)
				return hookclient.Response{OK: true, Message: "refci: creating repository " + s.repo + " failed: " + err.Error()}
			}
			s.mu.Lock()
			s.moved = true
			s.mu.Unlock()
			created = "refci: created repository " + s.repo + "\n"
		}
		if srv.cfg.OnReceive == nil {
			return hookclient.Response{OK: true, Message: created}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		msg := srv.cfg.OnReceive(ctx, &Receive{ID: s.id, Repo: s.repo, Path: s.repoPath(), Updates: ups, PushOptions: req.Options})
		return hookclient.Response{OK: true, Message: created + msg}
	}
	return hookclient.Response{Message: "refci: unknown hook " + strconv.Quote(req.Hook)}
}

// confirm keeps the updates that this session's update hook allowed and
// whose ref now holds the reported value.
func (s *hookSession) confirm(ups []RefUpdate) []RefUpdate {
	s.mu.Lock()
	allowed := map[string]bool{}
	for _, u := range s.allowed {
		allowed[u.Name] = true
	}
	s.mu.Unlock()
	repo, err := openRepo(s.path)
	if err != nil {
		return nil
	}
	var out []RefUpdate
	for _, u := range ups {
		if !allowed[u.Name] {
			continue
		}
		cur, err := repo.RefHash(u.Name)
		switch {
		case u.Deleting() && err != nil:
		case err == nil && cur.String() == u.New:
		default:
			continue // changed again since, or a report that is not true
		}
		out = append(out, u)
	}
	return out
}

// fixHead points HEAD of a repository whose HEAD names a missing branch
// (a new repository whose first push was not main) at the first branch
// the push created, as forges do, so clones check something out.
func fixHead(path string, ups []RefUpdate) {
	b, err := os.ReadFile(filepath.Join(path, "HEAD"))
	if err != nil {
		return
	}
	target, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "ref: ")
	if !ok {
		return
	}
	repo, err := openRepo(path)
	if err != nil {
		return
	}
	if _, err := repo.RefHash(target); err == nil {
		return
	}
	for _, u := range ups {
		if strings.HasPrefix(u.Name, "refs/heads/") && !u.Deleting() {
			cmd := exec.Command("git", "symbolic-ref", "HEAD", u.Name)
			cmd.Dir = path
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=" + path}
			cmd.Run()
			return
		}
	}
}

// parseUpdates reads "old new ref" lines as pre- and post-receive get them.
func parseUpdates(stdin string) ([]RefUpdate, error) {
	var out []RefUpdate
	sc := bufio.NewScanner(strings.NewReader(stdin))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 || len(f[0]) != 40 || len(f[1]) != 40 {
			return nil, errors.New("hook input is not \"old new ref\" lines")
		}
		out = append(out, RefUpdate{Old: f[0], New: f[1], Name: f[2]})
	}
	return out, sc.Err()
}

// quarantineDir checks the quarantine directory a hook reported: it must
// be a directory directly inside the repository's objects directory (as
// receive-pack makes it), or empty (git without quarantine).
func quarantineDir(repo, q string) (string, error) {
	if q == "" {
		return "", nil
	}
	if !filepath.IsAbs(q) {
		q = filepath.Join(repo, q)
	}
	q = filepath.Clean(q)
	if fi, err := os.Lstat(q); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("the push's object quarantine %q is not a directory", q)
	}
	// git names it from its working directory, with symlinks resolved.
	realQ, err1 := filepath.EvalSymlinks(q)
	realRepo, err2 := filepath.EvalSymlinks(repo)
	if err1 != nil || err2 != nil || filepath.Dir(realQ) != filepath.Join(realRepo, "objects") {
		return "", fmt.Errorf("the push's object quarantine %q is not inside the repository", q)
	}
	return q, nil
}

// Push is one push, as Policy.AllowRef sees it while deciding a ref.
// Its methods read the repository as the push would leave it: the
// pushed objects (still in receive-pack's quarantine) included. Not
// shared after AllowRef returns.
type Push struct {
	ID   Identity
	Repo string // clean repository name
	Path string // the bare repository's directory
	// Earlier are the updates of this push that AllowRef allowed before
	// this one, in the order receive-pack asked. In a push that is not
	// atomic, they may already be applied.
	Earlier []RefUpdate

	quarantine string
}

// Git runs git in the repository, seeing the pushed objects, and returns
// its standard output. Only for reading.
func (p *Push) Git(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-c", "core.hooksPath=/dev/null"}, args...)...)
	cmd.Dir = p.Path
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=" + p.Path, "GIT_DIR=" + p.Path}
	if p.quarantine != "" {
		cmd.Env = append(cmd.Env, "GIT_OBJECT_DIRECTORY="+p.quarantine, "GIT_ALTERNATE_OBJECT_DIRECTORIES="+filepath.Join(p.Path, "objects"))
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// IsAncestor reports whether commit old is new or an ancestor of it.
func (p *Push) IsAncestor(ctx context.Context, old, new string) (bool, error) {
	_, err := p.Git(ctx, "merge-base", "--is-ancestor", old, new)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false, nil
	}
	return err == nil, err
}

// RefValue returns the ref's current value in the repository, or "" when
// it does not exist.
func (p *Push) RefValue(name string) string {
	repo, err := openRepo(p.Path)
	if err != nil {
		return ""
	}
	h, err := repo.RefHash(name)
	if err != nil {
		return ""
	}
	return h.String()
}
