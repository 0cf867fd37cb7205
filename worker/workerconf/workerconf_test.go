package workerconf

import (
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"refci.dev/refci/forge/link"
	"refci.dev/refci/results"
)

// decode reads a worker.toml the way refci worker does: the child's
// settings left to it, any other unknown key an error.
func decode(t *testing.T, text string) Config {
	t.Helper()
	var c Config
	md, err := toml.Decode(text, &c)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	for _, k := range md.Undecoded() {
		if !link.IsChildSetting(k) {
			t.Fatalf("undecoded %q", k.String())
		}
	}
	return c
}

func TestDecodeEveryWorkerSetting(t *testing.T) {
	c := decode(t, `
remotes = ["file:///srv/a.git", "ssh://h/b.git"]
poll = "20s"
concurrency = 3
lease = "90s"
grace = "1m"
timeout = "2h"
max_timeout = "3h"
max_attempts = 4
kill_grace = "5s"
log_cap = 1000
artifact_cap = 2000
artifacts_total_cap = 3000
key = "/etc/refci/key.asc"
cache = "/var/cache/refci"
require_isolation = true
writable = ["/srv/out"]
admins = ["/etc/refci/admin.asc"]
trusted = ["/etc/refci/dev.asc"]
mirror_state = "/var/lib/refci/mirror"

[retention]
keep_last = 5
every = "24h"

[[forge]]
kind = "gitea"
repo = "o/r"
token_file = "/etc/refci/gitea-token"

[mail]
imap = "imap.example.org:993"
password_file = "/etc/refci/mail-password"
`)
	if c.Poll.Duration != 20*time.Second || c.Lease.Duration != 90*time.Second || c.KillGrace.Duration != 5*time.Second ||
		c.MaxAttempts != 4 || c.ArtifactsTotalCap != 3000 || !c.RequireIsolation || len(c.Remotes) != 2 {
		t.Errorf("decoded %+v", c)
	}
	p, err := c.Retention.Policy()
	if err != nil || p.KeepLast != 5 || p.KeepDays != results.DefaultRetention.KeepDays {
		t.Errorf("policy %+v, %v", p, err)
	}
	if !c.Wanted() || !c.NeedsHome() {
		t.Errorf("Wanted %v, NeedsHome %v; want true, true (a child, which runs under home)", c.Wanted(), c.NeedsHome())
	}
	want := []string{"/etc/refci/key.asc", "/var/cache/refci", "/etc/refci/worker.toml",
		"/var/lib/refci/mirror", "/etc/refci/gitea-token", "/etc/refci/mail-password"}
	if got := c.Private("", "/etc/refci/worker.toml"); !reflect.DeepEqual(got, want) {
		t.Errorf("Private:\n got %q\nwant %q", got, want)
	}
	var bad Config
	if _, err := toml.Decode(`poll = "often"`, &bad); err == nil || !strings.Contains(err.Error(), `"often" is not a duration (write e.g. "10s", "2m")`) {
		t.Errorf("a bad duration: %v", err)
	}
}

func TestSettingsNamesEveryKey(t *testing.T) {
	// The names, exactly: "poll" must not pass for being in
	// "pull_request_poll", nor "timeout" for "max_timeout".
	named := map[string]bool{}
	for _, f := range strings.FieldsFunc(Settings, func(r rune) bool { return r == ',' || r == ';' || r == ' ' || r == ':' }) {
		named[f] = true
	}
	typ := reflect.TypeOf(Config{})
	for i := 0; i < typ.NumField(); i++ {
		tag := typ.Field(i).Tag.Get("toml")
		if tag == "" || tag == "retention" {
			continue
		}
		if !named[tag] {
			t.Errorf("Settings does not name %q", tag)
		}
	}
	for _, k := range []string{"keep_last", "keep_days", "every", "mirror_state"} {
		if !named[k] {
			t.Errorf("Settings does not name %q", k)
		}
	}
}

func TestApplyFlagsWin(t *testing.T) {
	c := decode(t, "remotes = [\"a\"]\npoll = \"20s\"\nlease = \"90s\"\nadmins = [\"f.asc\"]\nkey = \"file.asc\"\nlog_cap = 7\n")
	c.Apply(Flags{Remotes: []string{"b", "c"}, Poll: time.Minute, Admins: []string{"g.asc"}, Trusted: []string{"t.asc"}, MaxAttempts: 2, RequireIsolation: true})
	if !reflect.DeepEqual(c.Remotes, []string{"b", "c"}) || c.Poll.Duration != time.Minute || c.Lease.Duration != 90*time.Second ||
		!reflect.DeepEqual(c.Admins, []string{"f.asc", "g.asc"}) || !reflect.DeepEqual(c.Trusted, []string{"t.asc"}) ||
		c.Key != "file.asc" || c.LogCap != 7 || c.MaxAttempts != 2 || !c.RequireIsolation {
		t.Errorf("after Apply: %+v", c)
	}
	if c.Concurrency != runtime.NumCPU() {
		t.Errorf("concurrency %d, want the number of CPUs %d", c.Concurrency, runtime.NumCPU())
	}
	c.Apply(Flags{Concurrency: 9, Key: "flag.asc", Cache: "/c", LogCap: 8})
	if c.Concurrency != 9 || c.Key != "flag.asc" || c.Cache != "/c" || c.LogCap != 8 {
		t.Errorf("after a second Apply: %+v", c)
	}
}

func TestCheckSaysTheMistake(t *testing.T) {
	for _, c := range []struct{ name, toml, want string }{
		{"no remote", "", "worker: no remote to serve; pass --remote URL (repeatable) or --config FILE"},
		{"attempts", "remotes = [\"a\"]\nmax_attempts = -1", "worker: --max-attempts -1: give a positive number of attempts (default 3)"},
		{"max timeout", "remotes = [\"a\"]\nmax_timeout = \"-1s\"", "worker: max_timeout -1s: give a positive duration (default 6h)"},
		{"lease", "remotes = [\"a\"]\nlease = \"2s\"", "worker: --lease 2s is too short; use at least 3s"},
		{"retention off", "remotes = [\"a\"]\n[retention]\nkeep_last = 2", `config w.toml: [retention]: set every (how often to collect, e.g. "24h") to turn it on, or remove the section`},
		{"retention often", "remotes = [\"a\"]\n[retention]\nevery = \"30s\"", `config w.toml: [retention]: every = "30s" is too often; use a minute or more (a day is plenty)`},
		{"retention negative", "remotes = [\"a\"]\n[retention]\nevery = \"1h\"\nkeep_days = -1", "config w.toml: [retention]: keep_last and keep_days take 0 or more"},
		{"writable", "remotes = [\"a\"]\nwritable = [\"/ok\", \"rel/dir\"]", `config w.toml: writable: "rel/dir" is not an absolute path; name the directories pipelines may write in full`},
		{"fine", "remotes = [\"a\"]\nlease = \"3s\"\nwritable = [\"/ok\"]\n[retention]\nevery = \"1m\"\nkeep_last = 0", ""},
	} {
		cfg := decode(t, c.toml)
		cfg.Apply(Flags{})
		p, err := cfg.Check("w.toml")
		if got := ""; err != nil {
			got = err.Error()
			if got != c.want {
				t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
			}
		} else if c.want != "" {
			t.Errorf("%s: no error, want %s", c.name, c.want)
		}
		if c.want == "" && (p.KeepLast != 0 || p.KeepDays != results.DefaultRetention.KeepDays) {
			t.Errorf("%s: policy %+v", c.name, p)
		}
	}
}

func TestPrivateDefaultsToHome(t *testing.T) {
	home := t.TempDir()
	c := decode(t, "remotes = [\"a\"]\n[[forge]]\nkind = \"github\"\nrepo = \"o/r\"\ntoken_file = \"/t\"\n")
	if !c.NeedsHome() {
		t.Fatal("NeedsHome: false without a key or a cache")
	}
	got := c.Private(home, "")
	want := []string{filepath.Join(home, "cache"), home, filepath.Join(home, "mirror"), "/t"}
	if !reflect.DeepEqual(got, want) || c.Cache != filepath.Join(home, "cache") {
		t.Errorf("Private %q (cache %q), want %q", got, c.Cache, want)
	}
	c = decode(t, "remotes = [\"a\"]\nkey = \"/k\"\ncache = \"/c\"\n")
	if c.NeedsHome() {
		t.Error("NeedsHome: true with a key and a cache and no child")
	}
}
