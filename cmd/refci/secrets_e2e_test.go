package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
)

// refciAs runs refci with another REFCI_HOME and stdin.
func (s *sandbox) refciAs(home, stdin string, args ...string) result {
	s.t.Helper()
	saved := s.env
	s.env = append(append([]string{}, saved...), "REFCI_HOME="+home)
	defer func() { s.env = saved }()
	if stdin == "" {
		return s.refci(args...)
	}
	cmd := exec.Command(refciBin, args...)
	cmd.Dir = s.repo
	cmd.Env = s.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	return r
}

// exportKey writes the public key of the refci key in home to a file.
func (s *sandbox) exportKey(home, file string) string {
	s.t.Helper()
	r := s.refciAs(home, "", "keys", "export").want(s.t, 0)
	p := filepath.Join(s.root, file)
	if err := os.WriteFile(p, []byte(r.stdout), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func (s *sandbox) gpgCmd(stdin string, args ...string) (string, error) {
	cmd := exec.Command("gpg", append([]string{"--batch", "--no-tty"}, args...)...)
	cmd.Env = s.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// leakForms are byte patterns that would reveal v.
func leakForms(v string) []string {
	return []string{v, base64.StdEncoding.EncodeToString([]byte(v)), base64.StdEncoding.EncodeToString([]byte(v + "\n")),
		hex.EncodeToString([]byte(v))}
}

// scanTree fails if a file under dir holds one of the patterns.
func scanTree(t *testing.T, dir string, pats []string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, pat := range pats {
			if bytes.Contains(b, []byte(pat)) {
				t.Errorf("%s holds a secret pattern %q", p, pat)
			}
		}
		return nil
	})
}

func (f *fleet) waitResult(request string) *queue.Status {
	f.t.Helper()
	var st *queue.Status
	f.waitFor("the result of "+request, 60*time.Second, func() bool {
		sts := f.finalResults()[request]
		if len(sts) == 0 {
			return false
		}
		st = sts[0]
		return true
	})
	return st
}

func (f *fleet) resultFile(request, path string) string {
	f.t.Helper()
	for _, ref := range f.remoteRefs("refs/ci/runs/") {
		st, err := queue.DecodeStatus([]byte(f.gitErr(f.bare, "show", ref+":status.json")))
		if err == nil && st.Request == request && st.State.Final() {
			return f.gitErr(f.bare, "show", ref+":"+path)
		}
	}
	f.t.Fatalf("no result for %s", request)
	return ""
}

func TestSecretsEndToEnd(t *testing.T) {
	const script = `set -u
if ! tok=$(refci secret NETLIFY_TOKEN); then echo "no secret for us"; exit 3; fi
echo "token is $tok"
printf %s "$tok" | base64
echo "$tok" > "$REFCI_ARTIFACTS/leak.txt"
refci job deploy -- sh -c 'printf "job sees %s\n" "$(refci secret NETLIFY_TOKEN)"'
`
	f := newFleet(t, script)
	s := f.sandbox
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = s.env
		cmd.Run()
	})
	w1Home, w2Home := filepath.Join(s.root, "worker-w1"), filepath.Join(s.root, "worker-w2")
	adminKey := s.exportKey(s.home, "admin.asc")
	w1Key, w2Key := s.exportKey(w1Home, "w1.asc"), s.exportKey(w2Home, "w2.asc")

	// A requester with a gpg key signs request tags.
	if out, err := s.gpgCmd("", "--passphrase", "", "--pinentry-mode", "loopback", "--quick-gen-key", "Requester <req@example.invalid>", "ed25519", "sign", "never"); err != nil {
		t.Fatalf("gpg: %v\n%s", err, out)
	}
	reqPub, _ := s.gpgCmd("", "--armor", "--export", "req@example.invalid")
	reqKey := filepath.Join(s.root, "requester.asc")
	os.WriteFile(reqKey, []byte(reqPub), 0o644)
	signedRequest := func(name, env string) {
		s.git("", "-c", "user.signingkey=req@example.invalid", "tag", "-f", "-s", "-m", "refci request\n\nEnv: "+env, "req-"+name, "HEAD")
		s.git("", "push", "-q", "-f", "origin", "refs/tags/req-"+name+":refs/ci/requests/"+name)
	}

	// The admin sets up the environment.
	r := s.refci("secrets", "init", "staging", "--recipient", w1Key, "--recipient", w2Key).want(t, 0)
	if !strings.Contains(r.stdout, "admins are recipients too") || !strings.Contains(r.stdout, "next: printf") {
		t.Errorf("init output:\n%s", r.stdout)
	}
	token := "tok-" + strings.Repeat("9f3a", 6)
	r = s.refciAs(s.home, token, "secrets", "set", "staging", "NETLIFY_TOKEN").want(t, 0)
	if !strings.Contains(r.stdout, "encrypted to 3 recipients") || strings.Contains(r.stdout, token) {
		t.Errorf("set output:\n%s", r.stdout)
	}
	if r := s.refciAs(s.home, "short", "secrets", "set", "staging", "SHORT"); r.code != 2 || !strings.Contains(r.stderr, "shorter than 6 bytes") {
		t.Errorf("short value: %d %s", r.code, r.stderr)
	}
	r = s.refci("secrets", "list", "staging").want(t, 0)
	if !strings.Contains(r.stdout, "NETLIFY_TOKEN  set by") || !strings.Contains(r.stdout, "trusted requests only") || strings.Contains(r.stdout, token) {
		t.Errorf("list output:\n%s", r.stdout)
	}
	// Stock gpg decrypts straight from the ref with the admin's key.
	adminPriv, _ := os.ReadFile(filepath.Join(s.home, "key.asc"))
	s.gpgImport(string(adminPriv))
	sealed := s.git("", "show", "refs/ci/secrets/staging:values/NETLIFY_TOKEN.asc")
	if out, err := s.gpgCmd(sealed+"\n", "--decrypt"); err != nil || out != token {
		t.Errorf("gpg --decrypt: %q, %v", out, err)
	}
	s.git("", "push", "-q", "origin", "refs/ci/secrets/staging")

	tmp := filepath.Join(s.root, "worker-tmp")
	os.Mkdir(tmp, 0o700)
	saved := s.env
	s.env = append(append([]string{}, saved...), "TMPDIR="+tmp)
	f.startWorker("w1", "--admin", adminKey, "--trusted", reqKey)
	s.env = saved

	// A signed request gets the secret, masked everywhere.
	signedRequest("trusted", "staging")
	st := f.waitResult("trusted")
	if st.State != queue.Success || !st.Trusted || st.Secrets != queue.SecretsAvailable || len(st.SecretsUsed) != 1 || !strings.Contains(st.TrustNote, "request tag is signed by") {
		t.Fatalf("trusted run: %+v", st)
	}
	logTxt := f.resultFile("trusted", "log.txt")
	if !strings.Contains(logTxt, "token is ***") || !strings.Contains(logTxt, "[deploy] job sees ***") {
		t.Errorf("log not masked as expected:\n%s", logTxt)
	}
	if a := f.resultFile("trusted", "artifacts/leak.txt"); a != "***\n" {
		t.Errorf("artifact: %q", a)
	}
	// No secret byte pattern anywhere in the result tree.
	for _, ref := range f.remoteRefs("refs/ci/runs/") {
		for _, p := range strings.Fields(f.gitErr(f.bare, "ls-tree", "-r", "--name-only", ref)) {
			content := f.gitErr(f.bare, "show", ref+":"+p)
			for _, pat := range leakForms(token) {
				if strings.Contains(content, pat) {
					t.Errorf("%s:%s holds %q", ref, p, pat)
				}
			}
		}
	}

	// An unsigned request runs without secrets, and says why.
	s.git("", "tag", "-f", "-a", "-m", "refci request\n\nEnv: staging", "req-untrusted", "HEAD")
	s.git("", "push", "-q", "-f", "origin", "refs/tags/req-untrusted:refs/ci/requests/untrusted")
	st = f.waitResult("untrusted")
	if st.Trusted || st.Secrets != queue.SecretsWithheld || !strings.Contains(st.SecretsReason, "not trusted") || st.State != queue.Failure {
		t.Errorf("untrusted run: %+v", st)
	}
	if l := f.resultFile("untrusted", "log.txt"); !strings.Contains(l, `refci secret: NETLIFY_TOKEN: the secrets of environment "staging" were withheld from this run`) {
		t.Errorf("untrusted log:\n%s", l)
	}

	// Rotation, and removing worker 2.
	token2 := "rotated-" + strings.Repeat("c0ffee", 4)
	s.refciAs(s.home, token2, "secrets", "set", "staging", "NETLIFY_TOKEN").want(t, 0)
	r = s.refci("secrets", "recipients", "remove", "staging", w2Key).want(t, 0)
	if !strings.Contains(r.stdout, "re-encrypted 1 values to 2 recipients") {
		t.Errorf("remove output:\n%s", r.stdout)
	}
	if r := s.refci("secrets", "get", "staging", "NETLIFY_TOKEN", "--key", filepath.Join(w2Home, "key.asc")); r.code == 0 || !strings.Contains(r.stderr, "not encrypted to this key") {
		t.Errorf("removed worker decrypts the new version: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := s.refci("secrets", "get", "staging", "NETLIFY_TOKEN", "--key", filepath.Join(w1Home, "key.asc")); r.code != 0 || r.stdout != token2 {
		t.Errorf("worker 1 get: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = s.refci("secrets", "history", "staging").want(t, 0)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 4 || !strings.Contains(lines[0], "remove recipient") || !strings.Contains(lines[3], "init staging") {
		t.Errorf("history:\n%s", r.stdout)
	}
	s.git("", "push", "-q", "origin", "refs/ci/secrets/staging")
	signedRequest("rotated", "staging")
	st = f.waitResult("rotated")
	if st.State != queue.Success || st.Secrets != queue.SecretsAvailable {
		t.Errorf("rotated run: %+v", st)
	}
	if l := f.resultFile("rotated", "log.txt"); strings.Contains(l, token2) || !strings.Contains(l, "token is ***") {
		t.Errorf("rotated log:\n%s", l)
	}

	// A forged environment: valid encryption, signed by an outsider.
	outsider := filepath.Join(s.root, "outsider")
	s.refciAs(outsider, "", "keys", "show").want(t, 0)
	s.refciAs(outsider, "", "secrets", "init", "forged", "--recipient", w1Key).want(t, 0)
	s.refciAs(outsider, "forged-value-123", "secrets", "set", "forged", "NETLIFY_TOKEN").want(t, 0)
	s.git("", "push", "-q", "origin", "refs/ci/secrets/forged")
	signedRequest("forged", "forged")
	st = f.waitResult("forged")
	if st.Secrets != queue.SecretsWithheld || !strings.Contains(st.SecretsReason, "not an admin key") {
		t.Errorf("forged run: %+v", st)
	}

	// An unsigned environment commit.
	unsignedEnv := s.git("", "commit-tree", "-m", "unsigned", s.git("", "rev-parse", "refs/ci/secrets/staging^{tree}"))
	s.git("", "push", "-q", "origin", unsignedEnv+":refs/ci/secrets/unsigned")
	signedRequest("unsigned", "unsigned")
	st = f.waitResult("unsigned")
	if st.Secrets != queue.SecretsWithheld || !strings.Contains(st.SecretsReason, "is not signed") {
		t.Errorf("unsigned environment: %+v", st)
	}

	// A rewritten environment (not a fast-forward of what the worker saw).
	s.git("", "update-ref", "-d", "refs/ci/secrets/staging")
	s.refci("secrets", "init", "staging", "--recipient", w1Key).want(t, 0)
	s.refciAs(s.home, "replayed-value-1", "secrets", "set", "staging", "NETLIFY_TOKEN").want(t, 0)
	s.git("", "push", "-q", "-f", "origin", "refs/ci/secrets/staging")
	signedRequest("rewritten", "staging")
	st = f.waitResult("rewritten")
	if st.Secrets != queue.SecretsWithheld || !strings.Contains(st.SecretsReason, "not a fast-forward") {
		t.Errorf("rewritten run: %+v", st)
	}

	f.stopAll()
	// The worker's temporary directories hold no secret bytes.
	var pats []string
	for _, v := range []string{token, token2} {
		pats = append(pats, leakForms(v)...)
	}
	scanTree(t, tmp, pats)
	scanTree(t, w1Home, pats)
}

func TestSecretsLocalRunAndUsage(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("refci secret API_KEY | base64\nrefci secret API_KEY > /dev/null && echo ok\n")
	w := s.exportKey(filepath.Join(s.root, "w"), "w.asc")
	s.refci("secrets", "init", "dev", "--recipient", w).want(t, 0)
	s.refciAs(s.home, "local-secret-42", "secrets", "set", "dev", "API_KEY").want(t, 0)
	r := s.refci("run", "--env", "dev").want(t, 0)
	if strings.Contains(r.stdout, base64.StdEncoding.EncodeToString([]byte("local-secret-42"))) || !strings.Contains(r.stdout, "***\nok\n") {
		t.Errorf("local run output:\n%s", r.stdout)
	}
	st := s.status("HEAD")
	if !st.Trusted || st.Secrets != queue.SecretsAvailable || st.SecretsUsed[0] != "API_KEY" {
		t.Errorf("status: %+v", st)
	}
	// A value gpg encrypted to the recipients and signed by the admin.
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = s.env
		cmd.Run()
	})
	adminPriv, _ := os.ReadFile(filepath.Join(s.home, "key.asc"))
	s.gpgImport(string(adminPriv))
	wPub, _ := os.ReadFile(w)
	s.gpgImport(string(wPub))
	adminFpr := strings.Fields(s.refci("keys", "show").want(t, 0).stdout)[0]
	wFpr := strings.Fields(s.refciAs(filepath.Join(s.root, "w"), "", "keys", "show").want(t, 0).stdout)[0]
	msg, err := s.gpgCmd("made-by-gpg-7", "--armor", "--trust-model", "always", "--encrypt", "--sign", "-u", adminFpr, "-r", adminFpr, "-r", wFpr)
	if err != nil {
		t.Fatalf("gpg: %v\n%s", err, msg)
	}
	r = s.refciAs(s.home, msg, "secrets", "set", "dev", "GPG_VALUE", "--sealed").want(t, 0)
	if !strings.Contains(r.stdout, "stored as sealed") {
		t.Errorf("set --sealed:\n%s", r.stdout)
	}
	if r := s.refciAs(s.home, "not a message at all", "secrets", "set", "dev", "GPG_VALUE", "--sealed"); r.code != 2 || !strings.Contains(r.stderr, "cannot be used") {
		t.Errorf("set --sealed garbage: %d %s", r.code, r.stderr)
	}
	s.pipeline("refci secret GPG_VALUE | sha256sum\n")
	r = s.refci("run", "--env", "dev").want(t, 0)
	if sum := sha256.Sum256([]byte("made-by-gpg-7")); !strings.Contains(r.stdout, hex.EncodeToString(sum[:])) {
		t.Errorf("the gpg-made value did not reach the pipeline:\n%s", r.stdout)
	}

	// Without --env the secret is refused with a hint.
	s.pipeline("refci secret API_KEY\n")
	r = s.refci("run").want(t, 1)
	if !strings.Contains(r.stdout, "this run has no secrets environment") {
		t.Errorf("no env:\n%s", r.stdout)
	}
	// Usage errors.
	for _, args := range [][]string{{"secrets"}, {"secrets", "frob"}, {"secrets", "set", "dev"}, {"secrets", "set", "dev", "bad-name"}, {"secrets", "list", "../x"}, {"secrets", "list", "nothere"}} {
		if r := s.refci(args...); r.code != 2 || !strings.HasPrefix(r.stderr, "refci: ") {
			t.Errorf("refci %v: %d %q", args, r.code, r.stderr)
		}
	}
	if r := s.refci("secrets", "-h").want(t, 0); !strings.Contains(r.stdout, "recipients remove") {
		t.Errorf("secrets -h:\n%s", r.stdout)
	}
	cfg := filepath.Join(s.root, "w.toml")
	os.WriteFile(cfg, []byte("remotes = [\"file:///nonexistent\"]\nadmins = [\"/nonexistent/admin.asc\"]\n"), 0o644)
	if r := s.refci("worker", "--config", cfg); r.code != 2 || !strings.Contains(r.stderr, "refci: worker: admins:") || !strings.Contains(r.stderr, "/nonexistent/admin.asc") {
		t.Errorf("worker with a missing admin key: %d %q", r.code, r.stderr)
	}
	if r := s.refci("secret", "X"); r.code != 2 || !strings.Contains(r.stderr, "not inside a refci pipeline") {
		t.Errorf("secret outside a pipeline: %d %q", r.code, r.stderr)
	}
}

// A pipeline that got a secret tries to get it into the result through
// every name it controls: job names and needs, artifact paths (plain and
// encoded, as a directory, as a symlink target), a job named after a
// value before it was handed out, the run's reason. None of it may carry
// the value's bytes into the result commit: its tree's names and files,
// status.json or its message. Refused jobs say why; left-out artifacts
// are listed with a masked path; the rest of the run still works.
func TestSecretsNeverInNames(t *testing.T) {
	s := newSandbox(t)
	const value, later = "Sekr3t-value_42", "known-name-77"
	s.pipeline(`set -u
# Named after a value that is handed out only afterwards.
refci job ` + later + ` -- false || true
refci secret LATER >/dev/null
v=$(refci secret API_KEY)
refci job "$v" -- true && echo "BAD: a job named after the secret ran" || echo "job name refused: $?"
refci job "x-$v-y" -- true && echo "BAD: a job holding the secret ran" || echo "job name holding it refused"
refci job okjob --needs "a,$v" -- true && echo "BAD: needs holding the secret" || echo "needs refused"
hexv=$(printf %s "$v" | od -An -tx1 | tr -d ' \n')
refci job "$hexv" -- true && echo "BAD: hex job name" || echo "hex job name refused"
refci job fine -- echo fine-job-ran
refci job cmdjob -- "/nonexistent/$v" || echo "cmdjob failed"
mkdir -p "$REFCI_ARTIFACTS/dir-$v"
echo hi > "$REFCI_ARTIFACTS/dir-$v/file.txt"
echo hi > "$REFCI_ARTIFACTS/file-$v.txt"
echo hi > "$REFCI_ARTIFACTS/$(printf %s "$v" | base64 | tr '/+' '_-').b64"
echo hi > "$REFCI_ARTIFACTS/$hexv.hex"
first=$(printf %s "$v" | cut -c1-6); rest=$(printf %s "$v" | cut -c7-)
mkdir -p "$REFCI_ARTIFACTS/split/$first"
echo hi > "$REFCI_ARTIFACTS/split/$first/$rest"
ln -s "/nowhere/$v" "$REFCI_ARTIFACTS/link"
echo kept > "$REFCI_ARTIFACTS/fine.txt"
`)
	w := s.exportKey(filepath.Join(s.root, "w"), "w.asc")
	s.refci("secrets", "init", "dev", "--recipient", w).want(t, 0)
	s.refciAs(s.home, value, "secrets", "set", "dev", "API_KEY").want(t, 0)
	s.refciAs(s.home, later, "secrets", "set", "dev", "LATER").want(t, 0)
	r := s.refci("run", "--env", "dev").want(t, 1) // the job named `later` failed
	for _, want := range []string{"job name refused: 2", "job name holding it refused", "needs refused", "hex job name refused", "[fine] fine-job-ran", "cmdjob failed",
		"holds a secret value handed out to this run"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the run's output does not say %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "BAD:") {
		t.Errorf("an attack got through:\n%s", r.stdout)
	}
	refs := s.runRefs()
	if len(refs) != 1 {
		t.Fatalf("run refs %q", refs)
	}
	ref := refs[0]
	leaks := append(leakForms(value), base64.URLEncoding.EncodeToString([]byte(value)), strings.ToUpper(hex.EncodeToString([]byte(value))), later,
		"Sekr3t/") // the value spelt across directories
	check := func(what, text string) {
		for _, pat := range leaks {
			if strings.Contains(text, pat) {
				t.Errorf("%s holds %q:\n%s", what, pat, text)
			}
		}
	}
	check("the commit", s.git("", "cat-file", "commit", ref))
	names := s.git("", "ls-tree", "-r", "--name-only", ref)
	check("the tree's names", names)
	for _, p := range strings.Split(names, "\n") {
		check(p, s.git("", "show", ref+":"+p))
	}
	st := s.status("HEAD")
	if st.State != queue.Failure || !strings.Contains(st.Reason, "job *** failed (.refci/run exited 0)") {
		t.Errorf("state %s, reason %q", st.State, st.Reason)
	}
	var jobs []string
	for _, j := range st.Jobs {
		jobs = append(jobs, j.Name)
		if j.Name == "masked-1" && (j.Log != "" || !strings.Contains(j.Reason, "its name holds a secret value")) {
			t.Errorf("the job named after a later value: %+v", j)
		}
		if j.Name == "cmdjob" && j.Reason != "command not found: /nonexistent/***" {
			t.Errorf("the reason of the job whose command names the value: %q", j.Reason)
		}
	}
	if strings.Join(jobs, ",") != "masked-1,fine,cmdjob" {
		t.Errorf("jobs %q; want the later-named one masked, and fine", jobs)
	}
	if len(st.Artifacts) != 1 || st.Artifacts[0].Path != "fine.txt" {
		t.Errorf("artifacts %+v; want fine.txt only", st.Artifacts)
	}
	skipped := map[string]string{}
	for _, a := range st.ArtifactsSkipped {
		skipped[a.Path] = a.Reason
	}
	for _, p := range []string{"dir-***/file.txt", "file-***.txt", "***.b64", "***.hex", "split***"} {
		if !strings.Contains(skipped[p], "holds a secret value") {
			t.Errorf("artifact %s: not listed as left out for its path (skipped: %q)", p, skipped)
		}
	}
	if !strings.Contains(skipped["link"], "symlink (to /nowhere/***)") {
		t.Errorf("the symlink's target is not masked: %q", skipped)
	}
	if !strings.Contains(names, "artifacts/fine.txt") || !strings.Contains(names, "jobs/fine/log.txt") {
		t.Errorf("the legitimate artifact or job log is missing:\n%s", names)
	}
}
