package refci

import (
	"encoding/json"
	"os/exec"
	"path"
	"strings"
	"testing"
)

// allowed lists, for each package tree, the project packages it may
// import. Anything not listed is refused, so a new arrow is a decision.
// A package follows the rules of the most specific tree that holds it.
// An entry names a top-level folder (all of its tree) or a package
// tree below one (worker/shim).
var allowed = map[string][]string{
	"queue":    {},
	"gitproto": {},
	// The hook client and its wire, all of cmd/refci-hook, which starts
	// on every push once per updated ref: nothing of the project (see
	// cmd/refci-hook's test of its dependencies).
	"gitproto/sshd/hookclient": {},
	// Finding the light binaries beside refci and checking their build;
	// its buildstamp is in the per-job shim: nothing of the project.
	"lightbin": {},
	// The SSH git endpoint: git, its hook client and finding that client.
	"gitproto/sshd": {"gitproto", "lightbin"},
	"secrets":       {},
	// The secrets environments kept in git refs: secrets itself knows
	// nothing about git.
	"secrets/envstore": {"queue", "gitproto", "secrets"},
	"render":           {"queue"},
	// Reading and watching results: every reader of runs and claims.
	"results": {"queue", "gitproto", "secrets", "render"},
	// Asking for runs: making and pushing requests.
	"requests": {"queue", "gitproto"},
	"worker":   {"queue", "gitproto", "secrets", "results", "lightbin"},
	// The shim side of the worker, all of cmd/refci-shim, which starts
	// twice per job: nothing of the project (see cmd/refci-shim's test of
	// its dependencies).
	"worker/shim": {"lightbin/buildstamp"},
	// Process supervision: the shim side and nothing else of the project.
	"worker/proc": {"worker/shim", "lightbin"},
	// The job socket's server; job names and states are queue's.
	"worker/jobsock": {"queue"},
	// The job socket's wire protocol and its client, all of
	// cmd/refci-job, which starts once per job: of the project only the
	// job name rule (see cmd/refci-job's test of its dependencies).
	"worker/jobsock/jobwire":   {},
	"worker/jobsock/jobclient": {"queue/jobname", "worker/jobsock/jobwire"},
	// worker.toml: the worker's settings, and of its refci-forge
	// child's only what the worker needs (forge/link, light, imports
	// nothing of the project); retention's policy is results'.
	"worker/workerconf": {"results", "forge/link"},
	"forge":             {"queue", "render", "secrets", "gitproto", "results", "requests"},
	// The link between a worker and its refci-forge child, both sides:
	// refci links it, so nothing of the project (and of the adapters).
	"forge/link": {},
	"fixtures":   {"secrets"}, // tests only: OpenPGP keys of fake identities come from secrets
	// refci serve without its command line: the SSH endpoint, and the
	// embedded worker that serves its repositories and trusts its
	// records (the worker knows nothing of the server); its retention
	// is results' Schedule over its repositories.
	"server": {"queue", "gitproto", "secrets", "worker", "results"},
	"cmd":    {"queue", "gitproto", "secrets", "results", "requests", "worker", "render", "forge", "server", "lightbin"},

	// Tests only: result and target commits written through gitproto;
	// a package of its own, since the tests of queue and gitproto import
	// fixtures.
	"fixtures/resultcommit": {"queue", "gitproto", "secrets"},
}

func TestImportRules(t *testing.T) {
	const mod = "refci.dev/refci/"
	n := 0
	for _, p := range listPackages(t) {
		rel, ok := strings.CutPrefix(p.ImportPath, mod)
		if !ok {
			continue
		}
		top, _, _ := strings.Cut(rel, "/")
		if _, known := allowed[top]; !known {
			t.Errorf("package %s is in an unknown top-level folder %q; add it to the rules", p.ImportPath, top)
			continue
		}
		tree := top
		for k := range allowed {
			if len(k) > len(tree) && inTree(rel, k) {
				tree = k
			}
		}
		rules := allowed[tree]
		for _, imp := range p.Imports {
			dep, ok := strings.CutPrefix(imp, mod)
			if !ok {
				continue
			}
			depTop, _, _ := strings.Cut(dep, "/")
			if inTree(dep, tree) {
				continue
			}
			if depTop == "fixtures" || strings.HasSuffix(path.Base(dep), "test") {
				t.Errorf("%s imports %s: only tests may import fixtures and the test helper packages (named *test)", p.ImportPath, imp)
				continue
			}
			okDep := false
			for _, a := range rules {
				okDep = okDep || a == depTop || inTree(dep, a)
			}
			if !okDep {
				t.Errorf("%s imports %s: %s may import only %v", p.ImportPath, imp, tree, rules)
			}
		}
		n++
	}
	if n < 5 {
		t.Fatalf("checked only %d packages; go list output changed?", n)
	}
}

// inTree says whether the package rel (a path in the module) lies in the
// tree of packages at dir.
func inTree(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// TestGoGitStaysInGitproto checks that only the gitproto tree imports
// go-git, in its code and its tests: everything else reads git through
// gitproto's own types.
func TestGoGitStaysInGitproto(t *testing.T) {
	for _, p := range listPackages(t) {
		if rel, _ := strings.CutPrefix(p.ImportPath, "refci.dev/refci/"); inTree(rel, "gitproto") {
			continue
		}
		for _, imp := range append(append(p.Imports, p.TestImports...), p.XTestImports...) {
			if strings.HasPrefix(imp, "github.com/go-git/") {
				t.Errorf("%s imports %s: only gitproto may use go-git", p.ImportPath, imp)
			}
		}
	}
}

// goPackage is what go list says of a package of the module.
type goPackage struct {
	ImportPath                         string
	Imports, TestImports, XTestImports []string
}

// listPackages lists the module's packages with their imports.
func listPackages(t *testing.T) []goPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports,TestImports,XTestImports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestRefciLinksNoAdapter checks that the refci binary, which starts on
// every run, job fallback, status and hook, carries none of the forge
// adapters, the mail bridge and their clients: they are refci-forge's,
// which refci execs (refci mirror, refci mail) or runs as a worker's
// child ([[forge]], [mail]).
func TestRefciLinksNoAdapter(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./cmd/refci").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %d packages", len(deps))
	}
	banned := []string{
		"refci.dev/refci/forge/github", "refci.dev/refci/forge/gitea", "refci.dev/refci/forge/gitlab",
		"refci.dev/refci/forge/mail", "refci.dev/refci/forge/forgeconf",
		"gitlab.com/gitlab-org/api/client-go", "github.com/google/go-github", "code.gitea.io/sdk/gitea",
		"github.com/emersion/go-imap", "github.com/emersion/go-message", "github.com/emersion/go-smtp",
		"github.com/emersion/go-sasl", "golang.org/x/text", "golang.org/x/oauth2",
	}
	for _, d := range deps {
		if d == "refci.dev/refci/forge" {
			t.Errorf("refci depends on %s: the mirror belongs in refci-forge", d)
		}
		for _, b := range banned {
			if d == b || strings.HasPrefix(d, b+"/") {
				t.Errorf("refci depends on %s: it belongs in refci-forge", d)
			}
		}
	}
}

// TestIMAPStaysInForgeMail checks that only forge/mail's code imports
// go-imap: the rest of refci reads mail through its Mailbox.
func TestIMAPStaysInForgeMail(t *testing.T) {
	for _, p := range listPackages(t) {
		if rel, _ := strings.CutPrefix(p.ImportPath, "refci.dev/refci/"); inTree(rel, "forge/mail") {
			continue
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/emersion/go-imap") {
				t.Errorf("%s imports %s: only forge/mail may use go-imap", p.ImportPath, imp)
			}
		}
	}
}
