// Package workerconf is the configuration of refci worker: the schema of
// worker.toml (Config), the command line's settings that win over it
// (Flags), the defaults, the checks made before anything runs (Check),
// and what of it pipelines must not read (Private). The [[forge]] and
// [mail] settings in the same file belong to the worker's refci-forge
// child (forge/link): Config holds only what the worker needs of them.
//
// It decodes nothing itself: the command reads the file into a Config
// (naming Settings when a setting is unknown, and leaving the child's
// to it with link.IsChildSetting).
package workerconf

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"refci.dev/refci/forge/link"
	"refci.dev/refci/results"
)

// Settings names the settings of worker.toml, in the order of the
// README, for errors ("known: ...").
const Settings = "remotes, poll, concurrency, lease, grace, timeout, max_timeout, max_attempts, kill_grace, log_cap, artifact_cap, artifacts_total_cap, key, cache, require_isolation, writable, admins, trusted, mirror_state, in [retention]: keep_last, keep_days, every, in [[forge]]: " + link.ForgeSettings + "; in [mail]: " + link.MailSettings

// Duration is a "10s" style value of worker.toml (link.Duration, the
// form the worker hands its child). The zero value is the setting's
// default.
type Duration = link.Duration

// Config is the TOML configuration of `refci worker --config`, decoded
// as it is (zero values are the worker's defaults, see worker.Config);
// Apply merges the command line's Flags over it and Check says its
// first mistake. A Config is a plain value: not safe for concurrent
// change.
type Config struct {
	Remotes           []string `toml:"remotes"`
	Poll              Duration `toml:"poll"`
	Concurrency       int      `toml:"concurrency"`
	Lease             Duration `toml:"lease"`
	Grace             Duration `toml:"grace"`
	Timeout           Duration `toml:"timeout"`
	MaxTimeout        Duration `toml:"max_timeout"`
	MaxAttempts       int      `toml:"max_attempts"`
	KillGrace         Duration `toml:"kill_grace"`
	LogCap            int64    `toml:"log_cap"`
	ArtifactCap       int64    `toml:"artifact_cap"`
	ArtifactsTotalCap int64    `toml:"artifacts_total_cap"`
	Key               string   `toml:"key"`
	Cache             string   `toml:"cache"`
	RequireIsolation  bool     `toml:"require_isolation"`
	// Writable lists paths isolated pipelines may write besides their
	// run directory and the scratch places (/tmp, /var/tmp, /dev/shm):
	// the rest of the file system is read-only for them.
	Writable []string `toml:"writable"`
	// Admins and Trusted are public key files: the secrets admins whose
	// signed environments are believed, and the requesters whose signed
	// requests are trusted (given secrets).
	Admins  []string `toml:"admins"`
	Trusted []string `toml:"trusted"`
	// [[forge]] entries show the runs of the remotes on forges, [mail]
	// runs the mail bridge beside the worker: refci-forge, the worker's
	// child, reads and checks them (forge/link); the worker reads only
	// the files it hides from pipelines.
	link.WorkerSettings
	// Retention, when its every is set, runs refci gc on each remote
	// that often (nil, no section: off).
	Retention *Retention `toml:"retention"`
}

// Retention is [retention] of worker.toml: the policy of refci gc
// (unset: its defaults) and how often a worker applies it to each of its
// remotes.
type Retention struct {
	KeepLast *int     `toml:"keep_last"`
	KeepDays *int     `toml:"keep_days"`
	Every    Duration `toml:"every"`
}

// Policy checks the section and returns the policy it sets; its error
// names the setting to fix.
func (r *Retention) Policy() (results.Retention, error) {
	p := results.DefaultRetention
	if r.Every.Duration <= 0 {
		return p, errors.New(`[retention]: set every (how often to collect, e.g. "24h") to turn it on, or remove the section`)
	}
	if r.Every.Duration < time.Minute {
		return p, fmt.Errorf("[retention]: every = %q is too often; use a minute or more (a day is plenty)", r.Every.Duration)
	}
	if r.KeepLast != nil {
		p.KeepLast = *r.KeepLast
	}
	if r.KeepDays != nil {
		p.KeepDays = *r.KeepDays
	}
	if p.KeepLast < 0 || p.KeepDays < 0 {
		return p, errors.New("[retention]: keep_last and keep_days take 0 or more")
	}
	return p, nil
}

// Flags are the settings of refci worker's command line. A zero field
// leaves the file's setting; Admins and Trusted add to the file's.
type Flags struct {
	Remotes                                 []string
	Poll, Lease, Grace, Timeout, MaxTimeout time.Duration
	MaxAttempts, Concurrency                int
	Key, Cache                              string
	LogCap                                  int64
	RequireIsolation                        bool
	Admins, Trusted                         []string
}

// Apply merges f over c (the command line wins) and fills the defaults
// that do not depend on a place: the concurrency (the number of CPUs).
func (c *Config) Apply(f Flags) {
	if len(f.Remotes) > 0 {
		c.Remotes = f.Remotes
	}
	c.Admins = append(c.Admins, f.Admins...)
	c.Trusted = append(c.Trusted, f.Trusted...)
	for _, d := range []struct {
		dst *Duration
		v   time.Duration
	}{{&c.Poll, f.Poll}, {&c.Lease, f.Lease}, {&c.Grace, f.Grace}, {&c.Timeout, f.Timeout}, {&c.MaxTimeout, f.MaxTimeout}} {
		if d.v > 0 {
			d.dst.Duration = d.v
		}
	}
	if f.MaxAttempts != 0 {
		c.MaxAttempts = f.MaxAttempts
	}
	if f.Concurrency > 0 {
		c.Concurrency = f.Concurrency
	}
	if c.Concurrency <= 0 {
		c.Concurrency = runtime.NumCPU()
	}
	if f.Key != "" {
		c.Key = f.Key
	}
	if f.Cache != "" {
		c.Cache = f.Cache
	}
	if f.LogCap > 0 {
		c.LogCap = f.LogCap
	}
	if f.RequireIsolation {
		c.RequireIsolation = true
	}
}

// Check says the first mistake of c (after Apply), as refci prints it
// (a usage error: the user fixes the file or the flags), and returns the
// retention policy (the zero policy when Retention is nil). file is the
// configuration file, named in the messages about its settings.
func (c *Config) Check(file string) (results.Retention, error) {
	var policy results.Retention
	switch {
	case len(c.Remotes) == 0:
		return policy, errors.New("worker: no remote to serve; pass --remote URL (repeatable) or --config FILE")
	case c.MaxAttempts < 0:
		return policy, fmt.Errorf("worker: --max-attempts %d: give a positive number of attempts (default 3)", c.MaxAttempts)
	case c.MaxTimeout.Duration < 0:
		return policy, fmt.Errorf("worker: max_timeout %s: give a positive duration (default 6h)", c.MaxTimeout.Duration)
	case c.Lease.Duration > 0 && c.Lease.Duration < 3*time.Second:
		return policy, fmt.Errorf("worker: --lease %s is too short; use at least 3s", c.Lease.Duration)
	}
	if c.Retention != nil {
		var err error
		if policy, err = c.Retention.Policy(); err != nil {
			return policy, fmt.Errorf("config %s: %v", file, err)
		}
	}
	for _, p := range c.Writable {
		if !filepath.IsAbs(p) {
			return policy, fmt.Errorf("config %s: writable: %q is not an absolute path; name the directories pipelines may write in full", file, p)
		}
	}
	return policy, nil
}

// NeedsHome reports whether a setting of c defaults to a place in
// refci's home ($REFCI_HOME): the key, the cache, or anything of the
// child (which runs under home).
func (c *Config) NeedsHome() bool { return c.Key == "" || c.Cache == "" || c.Wanted() }

// Private sets the cache to home's when it is unset (home is "" only
// when NeedsHome is false) and lists what pipelines must not read: the
// key (all of home when the key is home's), the caches, the
// configuration file and the child's secrets.
func (c *Config) Private(home, file string) []string {
	if c.Cache == "" {
		c.Cache = filepath.Join(home, "cache")
	}
	out := []string{c.Key, c.Cache, file}
	if c.Key == "" {
		out = append(out, home)
	}
	if c.Wanted() {
		out = append(out, c.WorkerSettings.Private(home)...)
	}
	return slices.DeleteFunc(out, func(p string) bool { return p == "" })
}
