package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	gossh "golang.org/x/crypto/ssh"

	"refci.dev/refci/forge/site"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/proc"
)

// serveLayout is where `refci serve` keeps its data, all under one
// directory (default $REFCI_HOME/serve, mode 0700).
type serveLayout struct {
	root, repos, state, cache, trust, owners, www, hostKey, roles string
}

func newServeLayout(root string) serveLayout {
	return serveLayout{
		root: root, repos: filepath.Join(root, "repos"), state: filepath.Join(root, "state"),
		cache: filepath.Join(root, "cache"), trust: filepath.Join(root, "trust"), owners: filepath.Join(root, "owners"), www: filepath.Join(root, "www"),
		hostKey: filepath.Join(root, "host_key"), roles: filepath.Join(root, "roles"),
	}
}

func cmdServe(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "serve")
	listen := fs.String("listen", "127.0.0.1:2222", "the SSH address to listen on (port 0: any free port)")
	dataDir := fs.String("data", "", "where repositories, keys and caches live (default $REFCI_HOME/serve)")
	var admins multiFlag
	fs.Var(&admins, "admin", "an OpenSSH public key file whose key becomes admin (repeatable; default ~/.ssh/*.pub on first start)")
	rolesFile := fs.String("roles", "", "the roles file (default DATA/roles; see README, 'refci serve')")
	conc := fs.Int("concurrency", 0, "pipelines the embedded worker runs at once (default: the number of CPUs; 0 workers is not possible)")
	httpAddr := fs.String("http", "", "also serve the static viewer read-only on this address (e.g. 8080 or 127.0.0.1:8080; loopback unless a host is given)")
	maxSessions := fs.Int("max-sessions", 64, "git sessions at once; more wait up to 10 s")
	maxPack := fs.String("max-pack", "1G", "largest pack a push may send (bytes, or with K, M, G)")
	idle := fs.Duration("idle", 5*time.Minute, "close connections silent this long")
	handshake := fs.Duration("handshake-timeout", 15*time.Second, "close connections that have not logged in this long after connecting")
	poll := fs.Duration("poll", 30*time.Second, "how often the embedded worker polls without being woken")
	noWorker := fs.Bool("no-worker", false, "serve git only; requests wait for workers elsewhere (refci worker --remote ssh://...)")
	var secretsAdminFiles, trustedFiles multiFlag
	fs.Var(&secretsAdminFiles, "secrets-admin", "OpenPGP public key of a secrets admin whose signed environments the embedded worker believes (repeatable; default: your own refci key)")
	fs.Var(&trustedFiles, "trusted", "OpenPGP public key whose signed request tags or commits run trusted, besides pushes by keys with the trusted role (repeatable)")
	verbose := fs.Bool("v", false, "log debug details")
	requireIso := fs.Bool("require-isolation", false, "fail runs (state error) when the server's files cannot be hidden from pipelines (no user namespaces)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	packBytes, err := parseSize(*maxPack)
	if err != nil {
		e.errorf("serve: --max-pack: %v", err)
		return exitUsage
	}
	if *maxSessions <= 0 || *idle <= 0 || *handshake <= 0 || *conc < 0 {
		e.errorf("serve: --max-sessions, --idle, --handshake-timeout and --concurrency must be positive")
		return exitUsage
	}
	proc.SetNotDumpable()
	if *dataDir == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		*dataDir = filepath.Join(h, "serve")
	}
	abs, err := filepath.Abs(*dataDir)
	if err != nil {
		e.errorf("serve: %v", err)
		return exitUsage
	}
	lay := newServeLayout(abs)
	if *rolesFile != "" {
		if lay.roles, err = filepath.Abs(*rolesFile); err != nil {
			e.errorf("serve: %v", err)
			return exitUsage
		}
	}
	for _, d := range []string{lay.root, lay.repos, lay.cache, lay.trust, lay.owners, lay.www} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			e.errorf("serve: %v", err)
			return exitInfra
		}
	}
	os.Chmod(lay.root, 0o700)

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))

	hostKey, err := loadOrCreateHostKey(lay.hostKey)
	if err != nil {
		e.errorf("serve: host key: %v", err)
		return exitInfra
	}
	adminNotes, err := ensureAdmins(lay.roles, admins, e.getenv("HOME"))
	if err != nil {
		e.errorf("serve: %v", err)
		return exitUsage
	}
	access, err := queue.NewAccessFile(lay.roles)
	if err != nil {
		e.errorf("serve: %v; fix the file and start again", err)
		return exitUsage
	}
	id, err := e.identity("")
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	refciHome, err := e.home()
	if err != nil {
		e.errorf("%v", err)
		return exitUsage
	}
	self, err := os.Executable()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	if *conc == 0 {
		*conc = runtime.NumCPU()
	}

	secretsAdmins, err := secrets.ReadKeyringFiles(secretsAdminFiles...)
	if err != nil {
		e.errorf("serve: --secrets-admin: %v", err)
		return exitUsage
	}
	if len(secretsAdminFiles) == 0 {
		secretsAdmins.Add(id)
	}
	trusted, err := secrets.ReadKeyringFiles(trustedFiles...)
	if err != nil {
		e.errorf("serve: --trusted: %v", err)
		return exitUsage
	}
	trust := &trustStore{dir: lay.trust}
	host, _ := os.Hostname()
	var byPath sync.Map // remote URL → *gitproto.Remote, for the secrets opener
	opener := secretsOpener(secretsAdmins, id, func(u string) *gitproto.Remote {
		if r, ok := byPath.Load(u); ok {
			return r.(*gitproto.Remote)
		}
		return nil
	})
	runs, runsHide, removeRuns, err := worker.MakeRunsDir()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	defer removeRuns()
	shim := self
	if !*noWorker {
		worker.WarnIfRoot(logger)
		shim = worker.ChooseShim(logger.With("component", "worker"), self)
	}
	w := worker.New(worker.Config{
		Poll: *poll, Concurrency: *conc, Signer: id, RefciPath: self, Shim: shim, Host: host, Version: version, TempDir: runs,
		Logger:  logger.With("component", "worker"),
		Trust:   anyTrust(trust.decide(lay.repos), signatureTrust(trusted)),
		Secrets: opener, Page: renderPage,
		// The data dir (host key, roles, repositories, caches, trust
		// records), the roles file and $REFCI_HOME (the key): a pipeline
		// needs none of them; its checkout and socket are in its run
		// directory, under runs, of which it sees only its own. What
		// refci's own git, ssh and gpg read stays read-only.
		Isolation: worker.Isolation{
			Hide:     worker.CleanPaths(append(append([]string{lay.root, lay.roles, refciHome}, worker.UserPrivatePaths(e.getenv)...), runsHide...)...),
			ReadOnly: worker.ReadOnlyPaths(e.getenv, []string{self, shim}), RequireIsolation: *requireIso,
		},
	})
	if !*noWorker {
		worker.WarnIfNotIsolated(logger.With("component", "worker"), shim, *requireIso)
	}
	addRepo := func(name string) {
		if *noWorker {
			return
		}
		path := filepath.Join(lay.repos, filepath.FromSlash(name))
		rem, err := gitproto.OpenRemote(path, filepath.Join(lay.cache, cacheName(path)), nil)
		if err != nil {
			logger.Error("the embedded worker cannot serve a repository", "repo", name, "err", err)
			return
		}
		byPath.Store(rem.URL, rem)
		w.AddRemote(rem)
	}
	repos, err := sshd.ListRepos(lay.repos)
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	for _, r := range repos {
		addRepo(r)
	}

	owners := &ownerStore{dir: lay.owners}
	policy := &rolesPolicy{file: access, owners: owners, log: logger}
	recv := &receiver{access: access, trust: trust, owners: owners, log: logger}
	if !*noWorker {
		recv.worker = w
	}
	srv, err := sshd.New(sshd.Config{
		Root: lay.repos, StateDir: lay.state, HostKey: hostKey, Policy: policy,
		Logger:           logger.With("component", "ssh"),
		CheckPushOptions: checkPushOptions,
		OnReceive:        recv.onReceive,
		OnCreate:         func(name, _ string) { addRepo(name) },
		MaxSessions:      *maxSessions, MaxPackBytes: packBytes, IdleTimeout: *idle, HandshakeTimeout: *handshake,
		HookCommand: []string{self, sshd.HookArg},
	})
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		srv.Close()
		e.errorf("serve: listen on %s: %v (choose another address with --listen)", *listen, err)
		return exitInfra
	}
	var httpSrv *http.Server
	httpURL := ""
	if *httpAddr != "" {
		if h, p, err := net.SplitHostPort(*httpAddr); err == nil && h == "" {
			*httpAddr = net.JoinHostPort("127.0.0.1", p) // loopback unless told otherwise
		} else if err != nil && !strings.Contains(*httpAddr, ":") {
			*httpAddr = net.JoinHostPort("127.0.0.1", *httpAddr)
		}
		hl, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			ln.Close()
			srv.Close()
			e.errorf("serve: --http %s: %v", *httpAddr, err)
			return exitInfra
		}
		// The site believes what refci view would on this account: this
		// server's own key and $REFCI_HOME/trusted/*.asc.
		siteKeys, err := e.keyring(nil, "")
		if err != nil {
			hl.Close()
			ln.Close()
			srv.Close()
			e.errorf("serve: --http: the keys the site trusts: %v", err)
			return exitUsage
		}
		viewer := site.NewHandler(lay.repos, lay.www, func() ([]string, error) { return site.ReposOnSite(lay.repos, policy.access()) }, siteKeys, logger.With("component", "http"))
		httpSrv = &http.Server{Handler: readOnly(viewer), ReadHeaderTimeout: 10 * time.Second}
		httpURL = "http://" + hl.Addr().String() + "/"
		go httpSrv.Serve(hl)
	}

	shown := *conc
	if *noWorker {
		shown = 0
	}
	writeBanner(e.stdout, bannerInfo{
		Data: lay.root, Roles: lay.roles, Admins: adminNotes, Addr: ln.Addr().String(),
		HostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hostKey.PublicKey()))),
		HostFP:  gossh.FingerprintSHA256(hostKey.PublicKey()), Signer: id.Fingerprint(), Repos: repos,
		Concurrency: shown, HTTP: httpURL,
	})

	stop, stopFn := context.WithCancel(ctx)
	defer stopFn()
	abort, abortFn := context.WithCancel(context.WithoutCancel(ctx))
	defer abortFn()
	shutdown := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for {
			select {
			case s := <-sigs:
				n++
				if n == 1 {
					logger.Info("signal: finishing git sessions and running pipelines, accepting nothing new (again to cancel them at once)", "signal", s.String())
					close(shutdown)
				} else {
					logger.Warn("second signal: cancelling running pipelines now", "signal", s.String())
					abortFn()
				}
			case <-stop.Done():
				return
			}
		}
	}()
	workerDone := make(chan error, 1)
	if *noWorker {
		go func() { <-stop.Done(); workerDone <- nil }()
	} else {
		go func() { workerDone <- w.Run(stop, abort) }()
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()
	logger.Info("serving", "ssh", ln.Addr().String(), "data", lay.root, "key", id.Fingerprint(), "concurrency", *conc)

	code := exitOK
	select {
	case <-shutdown:
	case <-ctx.Done():
	case err := <-serveDone:
		if err != nil {
			logger.Error("the SSH server stopped", "err", err)
			code = exitInfra
		}
	}
	// Drain: no new connections, running git sessions finish (bounded),
	// then the worker finishes its runs and pushes their results.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("shutdown", "err", err)
	}
	cancel()
	if httpSrv != nil {
		httpSrv.Close()
	}
	stopFn()
	if err := <-workerDone; err != nil {
		logger.Error("worker", "err", err)
		code = exitInfra
	}
	logger.Info("stopped")
	return code
}

// bannerInfo is what `refci serve` prints on start.
type bannerInfo struct {
	Data, Roles, Addr, HostKey, HostFP, Signer, HTTP string
	Admins                                           []string
	Repos                                            []string
	Concurrency                                      int
}

// writeBanner prints where the data is, which admins were taken, and the
// commands to use.
func writeBanner(w io.Writer, b bannerInfo) {
	host, port, _ := net.SplitHostPort(b.Addr)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "HOST" // listening everywhere: the user knows the name
	}
	base := "ssh://" + net.JoinHostPort(host, port)
	if strings.Contains(host, ":") {
		base = "ssh://[" + host + "]:" + port
	}
	fmt.Fprintf(w, "refci serve: listening on %s\n", base)
	fmt.Fprintf(w, "  data:      %s\n", b.Data)
	fmt.Fprintf(w, "  roles:     %s (edit it to add keys; it is re-read on change)\n", b.Roles)
	for _, a := range b.Admins {
		fmt.Fprintf(w, "  admin:     %s\n", a)
	}
	fmt.Fprintf(w, "  host key:  %s\n", b.HostFP)
	if b.Concurrency > 0 {
		fmt.Fprintf(w, "  results signed by %s; embedded worker runs %d at once\n", b.Signer, b.Concurrency)
	} else {
		fmt.Fprintf(w, "  no embedded worker (--no-worker): requests wait for workers elsewhere\n")
	}
	if len(b.Repos) > 0 {
		fmt.Fprintf(w, "  repositories: %s\n", strings.Join(b.Repos, " "))
	}
	if b.HTTP != "" {
		fmt.Fprintf(w, "  viewer:    %s\n", b.HTTP)
	}
	repo := "app.git"
	if len(b.Repos) > 0 {
		repo = b.Repos[0]
	}
	fmt.Fprintf(w, "\nUse it (an admin's first push of a branch creates the repository):\n")
	fmt.Fprintf(w, "  refci init && git add .refci/run && git commit -m 'Add refci pipeline'   # once, in your repository\n")
	fmt.Fprintf(w, "  git remote add ci %s/%s\n", base, repo)
	fmt.Fprintf(w, "  git push ci HEAD                              # your current branch, whatever its name\n")
	fmt.Fprintf(w, "  git push ci HEAD:refs/ci/requests/NAME        # runs at once; -o env=E -o timeout=20m for options\n")
	fmt.Fprintf(w, "  git fetch ci '+refs/ci/*:refs/ci/*' && refci status\n")
	fmt.Fprintf(w, "Other workers (give their key the worker role):\n")
	fmt.Fprintf(w, "  refci worker --remote %s/%s\n", base, repo)
	fmt.Fprintf(w, "Clients check the host key with this known_hosts line:\n")
	knownHost := host
	if port != "22" {
		knownHost = "[" + host + "]:" + port
	}
	fmt.Fprintf(w, "  %s %s\n\n", knownHost, b.HostKey)
}

// parseSize reads 1000, 512K, 100M, 1G.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size; write e.g. 500M or 2G", s)
	}
	return n * mult, nil
}

// loadOrCreateHostKey reads the ed25519 host key, generating it (0600)
// the first time.
func loadOrCreateHostKey(path string) (gossh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		fi, _ := os.Stat(path)
		if fi != nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
		}
		return gossh.ParsePrivateKey(b)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := gossh.MarshalPrivateKey(priv, "refci serve host key")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(pem.EncodeToMemory(block)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(signer.PublicKey()), 0o644)
	return signer, nil
}

const rolesHeader = `# refci serve: who may do what. One key per line:  ROLES[@REPO]  KEY
#   ROLES  comma-separated: read (clone, fetch), trigger (also push
#          refs/ci/requests/*), trusted (trigger, and their requests are
#          trusted), worker (write refs/ci/claims/* and refs/ci/runs/*),
#          admin (everything: branches, refs/ci/secrets/*, new repositories),
#          none.
#   @REPO  the line applies in that repository only (app or app.git) and
#          replaces the key's other lines there.
#   KEY    an OpenSSH public key line, or its fingerprint SHA256:...
# This file is re-read when it changes; no restart is needed.
`

// ensureAdmins makes sure the roles file names an admin: the keys of
// --admin files (added when missing), else, for a file without an admin,
// the user's own ~/.ssh/*.pub. It returns what it took, for the banner.
func ensureAdmins(rolesPath string, adminFiles []string, home string) ([]string, error) {
	existing, err := os.ReadFile(rolesPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("roles file: %w", err)
	}
	cur, err := queue.ParseAccess(bytes.NewReader(existing), rolesPath)
	if err != nil {
		return nil, fmt.Errorf("%w; fix the file and start again", err)
	}
	type key struct{ line, fp, from string }
	var keys []key
	readKeys := func(file string) error {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("--admin %s: %w", file, err)
		}
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
			if err != nil {
				return fmt.Errorf("admin key %s: not an OpenSSH public key (give a KEY.pub file): %v", file, err)
			}
			keys = append(keys, key{line: line, fp: gossh.FingerprintSHA256(pk), from: file})
			n++
		}
		if n == 0 {
			return fmt.Errorf("admin key %s holds no key", file)
		}
		return nil
	}
	for _, f := range adminFiles {
		if err := readKeys(f); err != nil {
			return nil, err
		}
	}
	if len(adminFiles) == 0 && len(cur.Admins()) == 0 {
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		pubs, _ := filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
		sort.Strings(pubs)
		for _, p := range pubs {
			if err := readKeys(p); err != nil {
				return nil, err
			}
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("no admin key: pass --admin KEY.pub, or make one with 'ssh-keygen -t ed25519' (refci takes ~/.ssh/*.pub)")
		}
	}
	var add strings.Builder
	var notes []string
	for _, k := range keys {
		if cur.Roles(k.fp, "")&queue.RoleAdmin == 0 {
			fmt.Fprintf(&add, "admin %s\n", k.line)
		}
		notes = append(notes, fmt.Sprintf("%s (from %s)", k.fp, k.from))
	}
	if len(keys) == 0 {
		for _, a := range cur.Admins() {
			notes = append(notes, fmt.Sprintf("%s %s (from %s)", a.Fingerprint, a.Label, rolesPath))
		}
	}
	if add.Len() > 0 {
		content := string(existing)
		if content == "" {
			content = rolesHeader
		} else if !strings.HasSuffix(content, "\n") {
			content += "\n"
		}
		if err := writeFileAtomic(rolesPath, []byte(content+add.String()), 0o600); err != nil {
			return nil, fmt.Errorf("roles file: %w", err)
		}
	}
	return notes, nil
}

// writeFileAtomic replaces path with b, with mode whatever the old file's
// was: readers see the old file or the new one, never a part, and the new
// one is on disk before it replaces the old (a roles file lost to a crash
// would lock every key out). The temporary file is made in path's
// directory, never in the shared one.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(mode))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(b); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}

// readOnly refuses every method but GET and HEAD.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

// rolesPolicy answers the SSH endpoint's questions from the roles file.
type rolesPolicy struct {
	file   *queue.AccessFile
	owners *ownerStore
	log    *slog.Logger
}

func (p *rolesPolicy) access() *queue.Access {
	a, err := p.file.Load()
	if err != nil {
		p.log.Error("roles file", "err", err)
	}
	return a
}

func (p *rolesPolicy) Known(fp string) bool { return p.access().Known(fp) }

func (p *rolesPolicy) AllowRepo(id sshd.Identity, repo string, op sshd.Op) error {
	r := p.access().Roles(id.Fingerprint, repo)
	switch {
	case op == sshd.OpCreate && !r.MayCreate():
		return fmt.Errorf("key %s may not create repositories (roles here: %s); an admin creates %s by pushing to it", id.Fingerprint, r, repo)
	case op == sshd.OpPush && r&^queue.RoleRead == 0:
		return fmt.Errorf("key %s may not push to %s (roles here: %s); pushing needs trigger, worker or admin in the roles file", id.Fingerprint, repo, r)
	case !r.MayRead():
		return fmt.Errorf("key %s has no access to %s; an admin can add it to the roles file", id.Fingerprint, repo)
	}
	return nil
}

func (p *rolesPolicy) AllowRef(push *sshd.Push, u sshd.RefUpdate) error {
	r := p.access().Roles(push.ID.Fingerprint, push.Repo)
	if err := r.MayUpdate(u.Name, u.Deleting()); err != nil {
		return err
	}
	if r&queue.RoleAdmin == 0 && r&queue.RoleWorker != 0 && !(strings.HasPrefix(u.Name, queue.RequestsPrefix) && r&(queue.RoleTrigger|queue.RoleTrusted) != 0) {
		if err := p.owners.checkWorker(push, u, time.Now()); err != nil {
			return err
		}
	}
	if strings.HasPrefix(u.Name, queue.RequestsPrefix) && !u.Deleting() {
		if err := queue.ValidateRequestName(strings.TrimPrefix(u.Name, queue.RequestsPrefix)); err != nil {
			return err
		}
	}
	return nil
}

// checkPushOptions accepts the options refci knows (env=NAME,
// timeout=DURATION), and only on pushes of requests.
func checkPushOptions(_ sshd.Identity, _ string, ups []sshd.RefUpdate, opts []string) error {
	if len(opts) == 0 {
		return nil
	}
	if _, err := requestOptions(opts); err != nil {
		return err
	}
	for _, u := range ups {
		if strings.HasPrefix(u.Name, queue.RequestsPrefix) && !u.Deleting() {
			return nil
		}
	}
	return fmt.Errorf("push options (-o) apply to requests only; push to %sNAME", queue.RequestsPrefix)
}

// requestOptions turns push options into request options.
func requestOptions(opts []string) (queue.RequestOptions, error) {
	var o queue.RequestOptions
	for _, opt := range opts {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "env":
			if queue.ValidateJobName(v) != nil {
				return o, fmt.Errorf("push option env=%q: use letters, digits, '.', '_' or '-'", v)
			}
			o.Env = v
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("push option timeout=%q: write a duration such as timeout=20m", v)
			}
			o.Timeout = d
		default:
			return o, fmt.Errorf("unknown push option %q; refci knows -o env=NAME and -o timeout=DURATION", opt)
		}
	}
	return o, nil
}

// receiver acts on pushes: options become request tags, trusted pushes
// are recorded, and the embedded worker is woken.
type receiver struct {
	access *queue.AccessFile
	trust  *trustStore
	owners *ownerStore
	worker *worker.Worker
	log    *slog.Logger
}

func (rc *receiver) onReceive(ctx context.Context, r *sshd.Receive) string {
	a, _ := rc.access.Load()
	roles := a.Roles(r.ID.Fingerprint, r.Repo)
	trusted := roles.Trusted()
	if err := rc.owners.record(r); err != nil {
		rc.log.Error("recording who owns claims and runs", "repo", r.Repo, "err", err)
	}
	opts, _ := requestOptions(r.PushOptions) // checked before the push was accepted
	var names []string
	var msgs []string
	for _, u := range r.Updates {
		name, ok := strings.CutPrefix(u.Name, queue.RequestsPrefix)
		if !ok || u.Deleting() {
			continue
		}
		val := u.New
		if opts.Env != "" || opts.Timeout > 0 {
			tag, err := tagRequest(ctx, r.Path, name, u.New, r.ID.Fingerprint, opts)
			if err != nil {
				rc.log.Error("request options not applied", "repo", r.Repo, "request", name, "err", err)
				msgs = append(msgs, fmt.Sprintf("refci: the options of request %s were not applied: %v", name, err))
			} else {
				val = tag
			}
		}
		if trusted {
			if err := rc.trust.record(r.Repo, val, r.ID.Fingerprint); err != nil {
				rc.log.Error("recording a trusted request", "repo", r.Repo, "request", name, "err", err)
			}
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		return strings.Join(msgs, "\n")
	}
	if rc.worker != nil {
		rc.worker.Poke(r.Path)
	}
	note := ""
	if trusted {
		note = " (trusted)"
	}
	msgs = append(msgs, fmt.Sprintf("refci: request %s queued%s; results: git fetch REMOTE '+refs/ci/*:refs/ci/*'", strings.Join(names, ", "), note))
	return strings.Join(msgs, "\n")
}

// tagRequest wraps a pushed request commit into an annotated tag carrying
// the options and moves the request ref to it, only if the ref still
// holds the pushed value.
func tagRequest(ctx context.Context, repo, name, pushed, fp string, o queue.RequestOptions) (string, error) {
	git := gitproto.CLI{Dir: repo, Env: gitproto.IsolatedConfig(repo)} // the served repository: not the operator's configuration
	typ, err := git.Run(ctx, "", "cat-file", "-t", pushed)
	if err != nil {
		return "", err
	}
	if typ != "commit" {
		return "", fmt.Errorf("the request is a %s, not a commit; put the options into its tag message instead", typ)
	}
	msg := queue.FormatRequestOptions("refci request "+name+" pushed over SSH by "+fp, o)
	tagger := fmt.Sprintf("refci serve <refci@localhost> %d +0000", time.Now().Unix())
	tag, err := git.MakeTag(ctx, gitproto.TagSpec{Target: gitproto.NewHash(pushed), Name: "refci-request", Tagger: tagger, Message: msg})
	if err != nil {
		return "", err
	}
	if err := git.UpdateRef(ctx, queue.RequestRef(name), tag, gitproto.NewHash(pushed), "refci: request options"); err != nil {
		return "", fmt.Errorf("the request changed meanwhile: %w", err)
	}
	return tag.String(), nil
}
