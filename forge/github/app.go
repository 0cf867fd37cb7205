package github

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	gh "github.com/google/go-github/v93/github"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// SummaryLimit is the most characters of a check run's output.summary
// (GitHub refuses longer with 422).
const SummaryLimit = 65535

// AppConfig says which repository on which GitHub, reached as an
// installation of a GitHub App. The App needs the repository permissions
// "Checks: write", "Pull requests: write" (for the comment) and
// "Metadata: read".
type AppConfig struct {
	Repo           string // "owner/name"
	AppID          int64  // the App's id (its settings page, "App ID")
	InstallationID int64  // its installation on the repository's owner
	// PrivateKeyFile holds one of the App's private keys, PEM (PKCS #1,
	// "RSA PRIVATE KEY", as GitHub gives it, or PKCS #8).
	PrivateKeyFile string
	// BaseURL and HTTP are as in Config.
	BaseURL string
	HTTP    *http.Client
}

// Installation tokens are renewed this long before they expire (GitHub's
// live an hour), so that no request goes out with one about to lapse.
const renewBefore = 5 * time.Minute

// NewApp returns the adapter for cfg: statuses are shown as check runs,
// comments and pull requests as with a token. It reads the private key
// but does not call GitHub; a key GitHub refuses shows at the first call,
// as an error wrapping forge.ErrAuth.
func NewApp(cfg AppConfig) (*Forge, error) {
	if cfg.AppID <= 0 || cfg.InstallationID <= 0 {
		return nil, fmt.Errorf("github %s: set app_id and installation_id (the App's settings page, and the number at the end of its installation's URL)", cfg.Repo)
	}
	key, err := ReadPrivateKey(cfg.PrivateKeyFile)
	if err != nil {
		return nil, fmt.Errorf("github %s: %w", cfg.Repo, err)
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	a := &appAuth{appID: cfg.AppID, installation: cfg.InstallationID, key: key}
	jwtClient := *hc
	jwtClient.Transport = authTransport{base: base, auth: a.jwtHeader}
	opts := []gh.ClientOptionsFunc{gh.WithHTTPClient(&jwtClient), gh.WithUserAgent("refci")}
	if cfg.BaseURL != "" {
		opts = append(opts, gh.WithEnterpriseURLs(cfg.BaseURL, cfg.BaseURL))
	}
	if a.apps, err = gh.NewClient(opts...); err != nil {
		return nil, fmt.Errorf("github %s: %w", cfg.Repo, err)
	}
	repoClient := *hc
	repoClient.Transport = authTransport{base: base, auth: a.tokenHeader, refused: a.forget}
	// New needs a token; the transport replaces it with the
	// installation's on every request.
	f, err := New(Config{Repo: cfg.Repo, Token: "installation", BaseURL: cfg.BaseURL, HTTP: &repoClient})
	if err != nil {
		return nil, err
	}
	f.app = a
	f.runs = map[string]int64{}
	// The installation's own budget of content-creating requests.
	f.writes = budgetOf(fmt.Sprintf("%s\x00app %d installation %d", cfg.BaseURL, cfg.AppID, cfg.InstallationID))
	f.authHint = fmt.Sprintf("check app_id %d, installation_id %d and private_key_file (the key may have been deleted from the App, or the App uninstalled)", cfg.AppID, cfg.InstallationID)
	f.permHint = "give the App the repository permissions Checks: write, Pull requests: write and Metadata: read, and accept them on the installation"
	return f, nil
}

// ReadPrivateKey reads a GitHub App's private key from a PEM file.
func ReadPrivateKey(path string) (*rsa.PrivateKey, error) {
	if path == "" {
		return nil, errors.New("no private_key_file: download a private key from the App's settings page and name its file")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("private_key_file %s: %w", path, errors.Unwrap(err))
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("private_key_file %s is not PEM: use the .pem file the App's settings page gives", path)
	}
	var key any
	switch blk.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("private_key_file %s holds a %q, not an RSA private key: use the .pem file the App's settings page gives", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("private_key_file %s: %v", path, err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private_key_file %s holds a %T key, not RSA: GitHub Apps sign with RSA keys", path, key)
	}
	return rk, nil
}

// appAuth makes the App's JWTs and keeps its installation token.
type appAuth struct {
	appID, installation int64
	key                 *rsa.PrivateKey
	apps                *gh.Client // authenticated with JWTs

	mu      sync.Mutex // held while a token is fetched: one fetch at a time
	token   string
	expires time.Time
}

// jwt returns a JWT for the App, signed RS256: issued a minute ago (for
// clocks that differ), expiring in nine minutes (GitHub allows ten).
func (a *appAuth) jwt(now time.Time) (string, error) {
	enc := base64.RawURLEncoding
	claims, err := json.Marshal(map[string]any{"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(9 * time.Minute).Unix(), "iss": strconv.FormatInt(a.appID, 10)})
	if err != nil {
		return "", err
	}
	signed := enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, a.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signed + "." + enc.EncodeToString(sig), nil
}

func (a *appAuth) jwtHeader(context.Context) (string, error) {
	t, err := a.jwt(time.Now())
	return "Bearer " + t, err
}

func (a *appAuth) tokenHeader(ctx context.Context) (string, error) {
	t, err := a.installationToken(ctx)
	return "token " + t, err
}

// installationToken returns the installation's token, fetching a new one
// when there is none or it expires within renewBefore.
func (a *appAuth) installationToken(ctx context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.token != "" && time.Until(a.expires) > renewBefore {
		return a.token, nil
	}
	it, _, err := a.apps.Apps.CreateInstallationToken(ctx, a.installation, nil)
	if err != nil {
		what := fmt.Sprintf("get a token for installation %d of App %d", a.installation, a.appID)
		var er *gh.ErrorResponse
		if errors.As(err, &er) && er.Response != nil {
			switch er.Response.StatusCode {
			case http.StatusUnauthorized:
				return "", &tokenError{fmt.Errorf("%s: %w: GitHub refused the App's JWT (%s); check app_id and that private_key_file is one of the App's current keys", what, forge.ErrAuth, er.Message)}
			case http.StatusNotFound:
				return "", &tokenError{fmt.Errorf("%s: %w: no such installation; check installation_id (the number at the end of the installation's settings URL)", what, forge.ErrAuth)}
			case http.StatusForbidden:
				return "", &tokenError{fmt.Errorf("%s: %w: %s (the installation may be suspended)", what, forge.ErrAuth, er.Message)}
			}
		}
		return "", &tokenError{fmt.Errorf("%s: %w", what, err)}
	}
	a.token = it.GetToken()
	a.expires = it.GetExpiresAt().Time
	if a.expires.IsZero() {
		a.expires = time.Now().Add(time.Hour)
	}
	return a.token, nil
}

// tokenError is a failure to get an installation token, which the
// request that needed it returns (through go-github's *url.Error).
type tokenError struct{ err error }

func (e *tokenError) Error() string { return e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }

// forget drops the installation token header auth if it is the current
// one: GitHub refused it (expired early, or revoked).
func (a *appAuth) forget(auth string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if "token "+a.token == auth {
		a.token = ""
	}
}

// authTransport sets the Authorization header of each request to auth's.
// When refused is set and GitHub answers 401, it calls refused with the
// header and sends the request once more with a fresh header.
type authTransport struct {
	base    http.RoundTripper
	auth    func(context.Context) (string, error)
	refused func(string)
}

func (t authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	send := func() (*http.Response, string, error) {
		h, err := t.auth(r.Context())
		if err != nil {
			return nil, "", err
		}
		r2 := r.Clone(r.Context())
		if r.GetBody != nil {
			if r2.Body, err = r.GetBody(); err != nil {
				return nil, "", err
			}
		}
		r2.Header.Set("Authorization", h)
		resp, err := t.base.RoundTrip(r2)
		return resp, h, err
	}
	resp, h, err := send()
	if err != nil || resp.StatusCode != http.StatusUnauthorized || t.refused == nil || (r.Body != nil && r.GetBody == nil) {
		return resp, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.refused(h)
	resp, _, err = send()
	return resp, err
}

// Check runs: how a run's state shows when refci is a GitHub App.
//
// running is in_progress; success, failure and cancelled are the
// conclusions of those names; error (the machine failed, not the code) is
// action_required: like failure it blocks a branch protection rule that
// requires the check (neutral and skipped would let the pull request
// merge untested), yet it shows apart from failure, and it says what is
// true: the code was not judged, someone must look at the run (its
// details_url) and run it again. timed_out or cancelled would tell a
// cause that is not known.
func conclusion(s queue.State) (status, concl string, err error) {
	switch s {
	case queue.Running:
		return "in_progress", "", nil
	case queue.Success:
		return "completed", "success", nil
	case queue.Failure:
		return "completed", "failure", nil
	case queue.Error:
		return "completed", "action_required", nil
	case queue.Cancelled:
		return "completed", "cancelled", nil
	}
	return "", "", fmt.Errorf("no GitHub check run conclusion for state %q", s)
}

// maxRemembered bounds the check run ids remembered; past it they are
// forgotten and found again on GitHub.
const maxRemembered = 10000

// setCheckRun shows s as the App's one check run named s.Context on
// commit: updated when the App has one (remembered, or found on GitHub),
// else created.
func (f *Forge) setCheckRun(ctx context.Context, commit string, s forge.Status) error {
	status, concl, err := conclusion(s.State)
	if err != nil {
		return fmt.Errorf("%s: %w", f.where, err)
	}
	name := forge.OneLine(s.Context, ContextLimit)
	summary := s.Summary
	if summary == "" {
		summary = s.Description
	}
	out := &gh.CheckRunOutput{Title: gh.Ptr(forge.OneLine(s.Description, ContextLimit)), Summary: gh.Ptr(forge.Cut(summary, SummaryLimit))}
	var details *string
	if s.TargetURL != "" {
		details = &s.TargetURL
	}
	var completed *gh.Timestamp
	var conc *string
	if concl != "" {
		completed, conc = &gh.Timestamp{Time: time.Now()}, &concl
	}
	key := commit + " " + name
	f.runsMu.Lock()
	defer f.runsMu.Unlock() // one at a time: never two check runs per (commit, context)
	id, ok := f.runs[key]
	if !ok {
		if id, err = f.findCheckRun(ctx, commit, name); err != nil {
			return err
		}
	}
	if id != 0 {
		if err := f.write("update the check run " + name + " of " + short(commit)); err != nil {
			return err
		}
		_, _, err = f.c.Checks.UpdateCheckRun(ctx, f.owner, f.name, id, gh.UpdateCheckRunOptions{Name: name, DetailsURL: details, Status: &status, Conclusion: conc, CompletedAt: completed, Output: out})
		if err == nil {
			f.remember(key, id)
			return nil
		}
		var er *gh.ErrorResponse
		if !errors.As(err, &er) || er.Response == nil || er.Response.StatusCode != http.StatusNotFound {
			return f.wrap("update the check run "+name+" of "+short(commit), err)
		}
		delete(f.runs, key) // deleted on GitHub: make it again
	}
	if err := f.write("create the check run " + name + " of " + short(commit)); err != nil {
		return err
	}
	cr, _, err := f.c.Checks.CreateCheckRun(ctx, f.owner, f.name, gh.CreateCheckRunOptions{Name: name, HeadSHA: commit, DetailsURL: details, Status: &status,
		Conclusion: conc, StartedAt: &gh.Timestamp{Time: time.Now()}, CompletedAt: completed, Output: out})
	if err != nil {
		return f.wrap("create the check run "+name+" of "+short(commit), err)
	}
	f.remember(key, cr.GetID())
	return nil
}

// remember keeps the id of the check run of key; f.runsMu is held.
func (f *Forge) remember(key string, id int64) {
	if _, ok := f.runs[key]; !ok && len(f.runs) >= maxRemembered {
		clear(f.runs)
	}
	f.runs[key] = id
}

// findCheckRun returns the id of the App's newest check run named name on
// commit, or 0.
func (f *Forge) findCheckRun(ctx context.Context, commit, name string) (int64, error) {
	res, _, err := f.c.Checks.ListCheckRunsForRef(ctx, f.owner, f.name, commit, &gh.ListCheckRunsOptions{
		CheckName: &name, AppID: &f.app.appID, Filter: gh.Ptr("latest"), ListOptions: gh.ListOptions{PerPage: 100}})
	if err != nil {
		return 0, f.wrap("find the check run "+name+" of "+short(commit), err)
	}
	for _, cr := range res.CheckRuns {
		if cr.GetName() == name && (cr.GetApp() == nil || cr.GetApp().GetID() == f.app.appID) {
			return cr.GetID(), nil
		}
	}
	return 0, nil
}
