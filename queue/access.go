package queue

// Access control of refci's SSH endpoint (`refci serve`): which public key
// may do what, read from a roles file the admin edits.
//
// The roles file has one key per line:
//
//	# ROLES[@REPO]     KEY
//	admin              ssh-ed25519 AAAAC3Nza... alice@laptop
//	trigger            ssh-ed25519 AAAAC3Nza... bob
//	trigger,trusted    SHA256:3q2+7w...        (a key named by its fingerprint)
//	worker             ssh-ed25519 AAAAC3Nza... build-2
//	none@private.git   ssh-ed25519 AAAAC3Nza... bob
//
// A line "public REPO..." (no key) puts repositories whose roles restrict
// reading on the read-only HTTP site all the same (see OnSite).
//
// ROLES is a comma-separated list of read, trigger, trusted, worker, admin
// or none. ROLES@REPO applies in one repository only and, there, replaces
// the key's other lines. KEY is an OpenSSH public key (as in
// authorized_keys, without options) or its SHA256 fingerprint as
// `ssh-keygen -lf` prints it. Blank lines and lines starting with # are
// ignored. A key listed on several lines has the union of their roles.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Roles is a set of roles. The zero value has no rights at all.
type Roles uint8

// The roles, from least to most power. Each implies the rights of the
// ones it names in its comment.
const (
	RoleRead    Roles = 1 << iota // clone and fetch
	RoleTrigger                   // read, and push or delete refs/ci/requests/*
	RoleTrusted                   // trigger; requests pushed by this key are trusted
	RoleWorker                    // read, write refs/ci/claims/*, refs/ci/runs/* and refs/ci/mail/*, delete finished requests
	RoleAdmin                     // everything: branches, tags, refs/ci/secrets/*, creating repositories
)

var roleNames = []struct {
	name string
	role Roles
}{{"read", RoleRead}, {"trigger", RoleTrigger}, {"trusted", RoleTrusted}, {"worker", RoleWorker}, {"admin", RoleAdmin}}

// String lists the roles, comma-separated ("none" when empty).
func (r Roles) String() string {
	var names []string
	for _, n := range roleNames {
		if r&n.role != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// ParseRoles reads a comma-separated role list such as "trigger,trusted".
func ParseRoles(s string) (Roles, error) {
	var r Roles
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "none" {
			continue
		}
		found := false
		for _, n := range roleNames {
			if n.name == part {
				r |= n.role
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown role %q; the roles are read, trigger, trusted, worker, admin and none", part)
		}
	}
	return r, nil
}

// MayRead reports whether the roles allow clone and fetch.
func (r Roles) MayRead() bool { return r != 0 }

// MayCreate reports whether the roles allow creating a repository by
// pushing to it.
func (r Roles) MayCreate() bool { return r&RoleAdmin != 0 }

// Trusted reports whether requests pushed with these roles are trusted.
func (r Roles) Trusted() bool { return r&(RoleTrusted|RoleAdmin) != 0 }

// MayUpdate checks one ref update: creating, moving or (deleting) removing
// ref. The error says which role would be needed; the caller names the
// ref.
func (r Roles) MayUpdate(ref string, deleting bool) error {
	switch {
	case r&RoleAdmin != 0:
		return nil
	case strings.HasPrefix(ref, RequestsPrefix):
		if r&(RoleTrigger|RoleTrusted) != 0 || deleting && r&RoleWorker != 0 {
			return nil
		}
		if r&RoleWorker != 0 {
			return fmt.Errorf("a worker key may only delete requests it ran; pushing requests needs the trigger role (this key has %s)", r)
		}
		return fmt.Errorf("pushing requests needs the trigger role (this key has %s)", r)
	case strings.HasPrefix(ref, ClaimsPrefix), strings.HasPrefix(ref, RunsPrefix):
		if r&RoleWorker != 0 {
			return nil
		}
		return fmt.Errorf("only worker and admin keys may write claims and runs (this key has %s)", r)
	case strings.HasPrefix(ref, MailPrefix):
		// The mail bridge's ledger and kept series heads: written by the
		// bridge's key, which also needs trigger to push requests.
		if r&RoleWorker != 0 {
			return nil
		}
		return fmt.Errorf("only worker and admin keys may write the mail bridge's refs; give the bridge's key the roles trigger,worker (this key has %s)", r)
	default:
		return fmt.Errorf("only admin keys may write this ref (this key has %s); requests go to %s<name>", r, RequestsPrefix)
	}
}

// Access is a parsed roles file: the roles of each key, globally and per
// repository. A nil or zero Access grants nothing. Safe for concurrent
// reads; never modified after parsing.
type Access struct {
	global  map[string]Roles            // by fingerprint
	perRepo map[string]map[string]Roles // repo -> fingerprint -> roles
	keys    map[string]string           // fingerprint -> comment or key text, for listings
	public  map[string]bool             // repositories an admin put on the HTTP site
}

// NormalizeRepoName adds the .git suffix a repository name may omit.
func NormalizeRepoName(name string) string {
	name = strings.Trim(name, "/")
	if !strings.HasSuffix(name, ".git") {
		name += ".git"
	}
	return name
}

// Fingerprint is the SHA256 fingerprint of an SSH public key, as
// `ssh-keygen -lf` prints it (SHA256:base64).
func Fingerprint(key ssh.PublicKey) string { return ssh.FingerprintSHA256(key) }

// ParseAccess reads a roles file. name is used in error messages; every
// error names the line and says what to write instead.
func ParseAccess(r io.Reader, name string) (*Access, error) {
	a := &Access{global: map[string]Roles{}, perRepo: map[string]map[string]Roles{}, keys: map[string]string{}, public: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rolesText, keyText := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			rolesText, keyText = line[:i], strings.TrimSpace(line[i+1:])
		}
		if keyText == "" {
			return nil, fmt.Errorf("%s:%d: write ROLES KEY, e.g. \"trigger ssh-ed25519 AAAA... bob\"", name, n)
		}
		if rolesText == "public" {
			for _, repo := range strings.Fields(keyText) {
				if strings.Contains(repo, "..") || strings.HasPrefix(repo, "/") || strings.ContainsAny(repo, "@:") {
					return nil, fmt.Errorf("%s:%d: %q is not a repository name; write e.g. \"public app.git\"", name, n, repo)
				}
				a.public[NormalizeRepoName(repo)] = true
			}
			continue
		}
		rolesText, repo, hasRepo := strings.Cut(rolesText, "@")
		roles, err := ParseRoles(rolesText)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		fp, label, err := parseKeyField(keyText)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if _, ok := a.keys[fp]; !ok || label != fp {
			a.keys[fp] = label
		}
		if hasRepo {
			if repo == "" || strings.Contains(repo, "..") {
				return nil, fmt.Errorf("%s:%d: %q after @ is not a repository name; write e.g. trigger@app.git", name, n, repo)
			}
			repo = NormalizeRepoName(repo)
			if a.perRepo[repo] == nil {
				a.perRepo[repo] = map[string]Roles{}
			}
			a.perRepo[repo][fp] |= roles
			continue
		}
		a.global[fp] |= roles
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return a, nil
}

// parseKeyField reads an OpenSSH public key line or a SHA256 fingerprint
// and returns the fingerprint and a label (the key's comment, or the
// fingerprint).
func parseKeyField(s string) (fp, label string, err error) {
	if strings.HasPrefix(s, "SHA256:") {
		fp, _, _ = strings.Cut(s, " ")
		if len(fp) != len("SHA256:")+43 {
			return "", "", fmt.Errorf("%q is not a SHA256 fingerprint (ssh-keygen -lf KEY.pub prints one)", fp)
		}
		return fp, fp, nil
	}
	key, comment, options, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return "", "", fmt.Errorf("not an OpenSSH public key (paste the line of KEY.pub, or its SHA256: fingerprint): %v", err)
	}
	if len(options) > 0 {
		return "", "", fmt.Errorf("authorized_keys options (%s) are not supported; give the key alone", strings.Join(options, ","))
	}
	fp = ssh.FingerprintSHA256(key)
	if comment == "" {
		comment = fp
	}
	return fp, comment, nil
}

// Roles returns the roles of the key with fingerprint fp in repository
// repo (a name as NormalizeRepoName returns; "" for no repository).
func (a *Access) Roles(fp, repo string) Roles {
	if a == nil {
		return 0
	}
	if repo != "" {
		if m, ok := a.perRepo[NormalizeRepoName(repo)]; ok {
			if r, ok := m[fp]; ok {
				return r
			}
		}
	}
	return a.global[fp]
}

// Known reports whether the file names the key at all (in any
// repository), which is what lets it log in.
func (a *Access) Known(fp string) bool {
	if a == nil {
		return false
	}
	if _, ok := a.global[fp]; ok {
		return true
	}
	for _, m := range a.perRepo {
		if _, ok := m[fp]; ok {
			return true
		}
	}
	return false
}

// OnSite reports whether repository repo may be shown on the read-only
// HTTP site, which anyone who reaches it can read: when every key the
// file names may read it, or when a "public" line names it.
func (a *Access) OnSite(repo string) bool {
	if a == nil {
		return false
	}
	repo = NormalizeRepoName(repo)
	if a.public[repo] {
		return true
	}
	for fp := range a.global {
		if !a.Roles(fp, repo).MayRead() {
			return false
		}
	}
	for _, m := range a.perRepo {
		for fp := range m {
			if !a.Roles(fp, repo).MayRead() {
				return false
			}
		}
	}
	return true
}

// KeyRoles is one key of a listing.
type KeyRoles struct {
	Fingerprint, Label string
	Roles              Roles
}

// Admins lists the keys with the admin role everywhere, by fingerprint.
func (a *Access) Admins() []KeyRoles {
	var out []KeyRoles
	if a == nil {
		return nil
	}
	for fp, r := range a.global {
		if r&RoleAdmin != 0 {
			out = append(out, KeyRoles{Fingerprint: fp, Label: a.keys[fp], Roles: r})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// AccessFile is a roles file that is re-read when it changes (its size or
// modification time), checked on each Load. The zero value is not usable;
// make one with NewAccessFile. Safe for concurrent use.
type AccessFile struct {
	path string

	mu      sync.Mutex
	size    int64
	mtime   time.Time
	current *Access
}

// NewAccessFile reads the roles file at path.
func NewAccessFile(path string) (*AccessFile, error) {
	f := &AccessFile{path: path}
	if _, err := f.Load(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path is the file's path.
func (f *AccessFile) Path() string { return f.path }

// Load returns the current roles, re-reading the file if it changed. A
// file that became unreadable or invalid is reported and the previous
// roles stay in force, so a half-saved edit never locks everyone out.
func (f *AccessFile) Load() (*Access, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		if f.current != nil {
			return f.current, fmt.Errorf("roles file: %w (keeping the roles read before)", err)
		}
		return nil, fmt.Errorf("roles file: %w", err)
	}
	if f.current != nil && fi.Size() == f.size && fi.ModTime().Equal(f.mtime) {
		return f.current, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		if f.current != nil {
			return f.current, fmt.Errorf("roles file: %w (keeping the roles read before)", err)
		}
		return nil, fmt.Errorf("roles file: %w", err)
	}
	a, err := ParseAccess(bytes.NewReader(b), f.path)
	if err != nil {
		if f.current != nil {
			// Remember the bad version so the error is not re-parsed on
			// every session, but keep the previous roles.
			f.size, f.mtime = fi.Size(), fi.ModTime()
			return f.current, fmt.Errorf("%w (keeping the roles read before; fix the file)", err)
		}
		return nil, err
	}
	f.current, f.size, f.mtime = a, fi.Size(), fi.ModTime()
	return a, nil
}
