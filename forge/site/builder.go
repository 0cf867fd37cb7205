// Package site builds and serves the static HTML site of a repository's
// results, the one `refci view` writes and `refci serve --http` serves:
// a list of every run, a page per run, per commit and per state, and a
// badge per request. Builder brings a site up to date incrementally;
// Handler serves the sites of many repositories, building each when it
// is asked for.
//
// What a result brought is the pusher's: the site decides for each run
// whether a trusted key vouches for it (a verdict), makes no file name
// from a value refci does not write, and serves such files only
// sandboxed.
package site

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
)

// Builder writes the static site of every refs/ci/runs/* of one
// repository into its output directory: index.html (every run, newest
// first, with the latest state of each request and since when),
// state-<state>.html (one per state of listStates, a list without
// runs too, as every page links them), a page per commit
// (commits/<target>.html) with its run history (each list paginated:
// writeLists), a page per run
// (runs/<target>/<run>/index.html, rendered by render.HTML with the
// logs, status.json and artifacts next to it) and a badge per request
// (badges/<request>.svg).
//
// Each run gets a verdict (verdictOf): verified by a trusted key,
// unverified, inconsistent with its ref, or invalid. Only verified runs
// are drawn in their state's colour, and only verified runs not dated in
// the future are the latest of a request (the summary table, the badges,
// a commit's "since when").
//
// No value read from a result names a file unless it has the shape refci
// writes: run directories are named from the run ref (checked by
// queue.ParseRunRef), job logs and artifacts only from a status.json that
// passes queue.Status.Validate, badges only from valid request names. And
// every write goes through an os.Root on the output directory, so that no
// path, nor a symbolic link already there, leads a write outside it.
//
// Builds are incremental: manifest.json in the output directory, with
// the runs file and its delta beside it (manifest.go), records each run
// ref's commit, its summary and verdict; a build renders only runs that
// are new or changed, removes runs whose ref is gone, rewrites the list
// pages only when something changed (and of those only the pages whose
// runs changed), and appends what changed to the delta. Verdicts are
// kept as long as the run ref's commit and the trusted keys are the
// same; other keys rebuild the site. Files are written in .tmp/ and
// renamed into place, so a server reading the output directory (Handler)
// never sees half a file, and a build stopped anywhere (killed, a full
// disk) leaves a site the next build takes up as if it had not been.
// The run pages are always refci's own rendering; a repository's
// .refci/viewer is not used here.
//
// A Builder is safe for concurrent use: Build calls are serialised. Two
// processes must not build one output directory at once. The zero value
// is not usable; make one with NewBuilder.
type Builder struct {
	gitDir  string
	out     string
	keys    secrets.Keyring
	workers int
	page    int
	warn    func(msg string)
	mu      sync.Mutex
}

// Options tunes a Builder. The zero value is the default.
type Options struct {
	// Workers is how many runs are rendered at once; 0: one per CPU.
	Workers int
	// PageSize is how many runs a page of a list shows; 0: 100.
	PageSize int
	// Warn is told of problems with single runs (a run that cannot be
	// rendered, an artifact that cannot be copied), which do not stop a
	// build; nil: they are only counted (Stats.Failed).
	Warn func(msg string)
}

// NewBuilder returns a Builder of the site of the repository whose git
// directory is gitDir, written into out (made when missing). Runs signed
// by a key of keys are verified; with no keys, every run is unverified.
func NewBuilder(gitDir, out string, keys secrets.Keyring, o Options) *Builder {
	page := o.PageSize
	if page <= 0 {
		page = defaultPageSize
	}
	return &Builder{gitDir: gitDir, out: out, keys: keys, workers: o.Workers, page: page, warn: o.Warn}
}

// Stats says what one Build did.
type Stats struct {
	Runs     int // runs on the site
	Rendered int // runs whose pages were written by this build
	Removed  int // runs removed because their ref is gone
	Verified int // runs whose verdict is verified
	Failed   int // runs that could not be rendered (warned)
	Took     time.Duration
}

const manifestFile = "manifest.json"

// siteFormat is the manifest's version; a site built with another is
// built again from scratch, but for formats 4 to 6, which are taken up.
// 2: summaries know attempts and lost runs. 3: summaries carry verdicts,
// and the manifest the keys they used. 4: the target commits' subjects
// and authors. 5: the runs and commits in a binary file of their own
// (manifest.go), and the lists paginated, with each page's fingerprint.
// 6: each build's changes appended to a delta beside that file, and the
// commit pages paginated. 7: every page links every state's list, and
// each of those lists is there, with runs or without (formats 4 to 6 are
// taken up with every list page written anew: their untouched commit
// pages could link a state's list that had gone).
const siteFormat = 7

// defaultPageSize is how many runs a page of a list shows.
const defaultPageSize = 100

// manifest is manifest.json: what the site holds, so that the next build
// renders only what changed. Its format is siteFormat.
type manifest struct {
	Format int    `json:"format"`
	Keys   string `json:"keys"` // keysID of the keys the verdicts were decided with
	// Runs, by run ref, and Commits are in RunsFile (format 5); format 4
	// had them here, where they are read from, never written to.
	Runs map[string]render.RunSummary `json:"runs,omitempty"`
	// Commits describes the target commits the repository had when a run
	// on them was rendered, by commit id: each is read once, for the
	// first new run on it. A commit fetched later is read for the next
	// new run on it.
	Commits map[string]render.CommitInfo `json:"commits,omitempty"`
	// RunsFile names the file of Runs and Commits (runsFileName).
	RunsFile string `json:"runs_file,omitempty"`
	// DeltaLen is how many bytes of the delta of RunsFile are the
	// site's (format 6; manifest.go).
	DeltaLen int64 `json:"delta_len,omitempty"`
	// Pages holds, for each paginated list ("index", "state-failure"...),
	// the fingerprint of each of its older pages, oldest first: a page
	// whose fingerprint is unchanged is not written again.
	Pages map[string][]string `json:"pages,omitempty"`

	hashes       map[string]uint64 // by run ref, runHash of its summary
	dirtyRuns    map[string]bool   // the runs set or removed since the manifest was read or written
	dirtyCommits map[string]bool   // the same, of Commits
	baseLen      int64             // the size of RunsFile
	rewrite      bool              // RunsFile must be written anew (a delta cut short, format 4)
	relist       bool              // every list page must be written anew (a site of an earlier format)
}

// keysID names a set of trusted keys: the SHA-256 of their armored public
// parts, which changes when a key is added, removed, revoked or renewed.
func keysID(kr secrets.Keyring) string {
	if kr.Len() == 0 {
		return "none"
	}
	raw, err := kr.Armored()
	if err != nil {
		var fprs []string
		for _, k := range kr.Keys() {
			fprs = append(fprs, k.Fingerprint)
		}
		raw = []byte(strings.Join(fprs, "\n"))
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// verdictOf decides what a run's result commit, whose message is msg, is
// worth to a reader who trusts kr: invalid when status.json has values
// refci never writes, inconsistent when its signed content does not agree
// with ref, unverified when it is not signed by a key of kr (signer says
// by which, or why none) or not by the worker it names, verified
// otherwise.
//
// Only the commit at the run ref is checked, not the snapshots before
// it: the site shows that commit's tree alone, and its signature covers
// its tree and message (refci verify walks the whole chain).
func verdictOf(kr secrets.Keyring, ref, msg string, st *queue.Status, signer func() (secrets.Signer, error)) render.Verdict {
	if err := st.Validate(); err != nil {
		return render.Verdict{Kind: render.VerdictInvalid, Why: err.Error()}
	}
	if err := queue.CheckResult(ref, st, msg); err != nil {
		return render.Verdict{Kind: render.VerdictInconsistent, Why: err.Error()}
	}
	if kr.Len() == 0 {
		return render.Verdict{Kind: render.VerdictUnverified, Why: "no trusted keys to check its signature with"}
	}
	by, err := signer()
	if errors.Is(err, secrets.ErrNoSignature) {
		return render.Verdict{Kind: render.VerdictUnverified, Why: "not signed: the result commit has no signature"}
	}
	if err != nil {
		return render.Verdict{Kind: render.VerdictUnverified, Why: strings.TrimPrefix(err.Error(), "secrets: ")}
	}
	if !strings.EqualFold(by.Fingerprint, st.Worker) {
		return render.Verdict{Kind: render.VerdictUnverified, Why: fmt.Sprintf("status.json names worker %s but the commit is signed by %s", st.Worker, by.Fingerprint)}
	}
	return render.Verdict{Kind: render.VerdictVerified, By: fmt.Sprintf("%s (%s)", by.UserID, by.Fingerprint)}
}

// explain adds what to do to an error of a write that a symbolic link in
// Out would have led outside it (os.Root refuses those).
func (b *Builder) explain(err error) error {
	if err != nil && strings.Contains(err.Error(), "path escapes") {
		return fmt.Errorf("%w: a symbolic link in %s leads out of it, and refci view does not write through such links; remove it", err, b.out)
	}
	return err
}

// Build brings Out up to date with the repository's run refs.
func (b *Builder) Build() (Stats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	start := time.Now()
	var st Stats
	repo, err := gitproto.Open(b.gitDir)
	if err != nil {
		return st, err
	}
	runs, err := listRuns(repo)
	if err != nil {
		return st, err
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return st, err
	}
	root, err := os.OpenRoot(b.out)
	if err != nil {
		return st, err
	}
	defer root.Close()
	// What a stopped build left half-written. (Two builds of one site at
	// once, in two processes, are not supported.)
	if err := root.RemoveAll(tmpDir); err != nil {
		return st, b.explain(err)
	}
	man := readManifest(root, keysID(b.keys))
	// One pass over the runs, in listRuns' order (newest first), with one
	// lookup of each in the manifest: all holds their summaries for the
	// lists, hashes their hashes; a run to render has its old summary
	// there, or none (Ref ""), until it is rendered. The set of live refs
	// is made only when some run went.
	var todo []renderJob
	all := make([]render.RunSummary, 0, len(runs))
	hashes := make([]uint64, 0, len(runs))
	at := map[string]int{} // the index in all of each run to render
	kept := 0              // runs of the manifest still here
	var hexID [40]byte
	for _, r := range runs {
		old, ok := man.Runs[r.ref]
		hashes = append(hashes, man.hashes[r.ref])
		all = append(all, old)
		if ok {
			kept++
			hex.Encode(hexID[:], r.commit[:])
			if old.Commit == string(hexID[:]) { // (no allocation)
				continue
			}
		}
		at[r.ref] = len(all) - 1
		todo = append(todo, renderJob{ref: r.ref, commit: r.commit})
	}
	b.readCommits(repo, &man, todo)
	changedTargets := map[string]bool{}
	changedRequests := map[string]bool{}
	if kept < len(man.Runs) {
		live := make(map[string]bool, len(runs))
		used := map[string]bool{} // the targets with runs
		for _, r := range runs {
			live[r.ref] = true
			used[r.target] = true
		}
		for ref, sum := range man.Runs {
			if live[ref] {
				continue
			}
			if target, run, ok := queue.ParseRunRef(ref); ok {
				if err := root.RemoveAll(path.Join("runs", target, run)); err != nil {
					return st, err
				}
			}
			man.removeRun(ref)
			changedTargets[sum.Target] = true
			changedRequests[sum.Request] = true
			st.Removed++
		}
		// Only a run that went can leave a commit without runs.
		for c := range man.Commits {
			if !used[c] {
				man.removeCommit(c)
			}
		}
	}
	renderedRefs := map[string]bool{} // a lost run may be rendered twice
	record := func(d rendered) {
		if d.err != nil {
			st.Failed++
			if b.warn != nil {
				b.warn(fmt.Sprintf("%s: %v", d.ref, b.explain(d.err)))
			}
			return
		}
		if old, ok := man.Runs[d.ref]; ok {
			changedRequests[old.Request] = true
		}
		man.setRun(d.ref, d.sum)
		changedTargets[d.sum.Target] = true
		changedRequests[d.sum.Request] = true
		renderedRefs[d.ref] = true
		i, ok := at[d.ref]
		if !ok { // a lost run: a few of them, looked for in the list
			i = slices.IndexFunc(all, func(s render.RunSummary) bool { return s.Ref == d.ref })
		}
		if i >= 0 {
			all[i], hashes[i] = man.Runs[d.ref], man.hashes[d.ref]
		}
	}
	for _, d := range b.renderAll(root, todo) {
		record(d)
	}
	// Runs whose worker was lost are rendered again as lost once the
	// attempt that took them over is here (and as they are, should that
	// attempt go away).
	for _, d := range b.renderAll(root, lostChanged(&man, all)) {
		record(d)
	}
	if man.relist {
		// A site of an earlier format: every commit's pages and every
		// badge are written again, as are the other lists' (writeLists).
		for _, s := range all {
			if s.Ref != "" {
				changedTargets[s.Target], changedRequests[s.Request] = true, true
			}
		}
	}
	st.Rendered = len(renderedRefs)
	st.Runs = len(man.Runs)
	_, statErr := root.Stat("index.html")
	if len(changedTargets) == 0 && len(changedRequests) == 0 && statErr == nil && !man.changed() {
		for _, s := range all {
			if s.Verdict.Verified() {
				st.Verified++
			}
		}
		st.Took = time.Since(start)
		return st, nil
	}
	// A run that could not be rendered, and was not on the site, is left
	// out.
	n := 0
	for i := range all {
		if all[i].Ref == "" {
			continue
		}
		all[n], hashes[n] = all[i], hashes[i]
		n++
	}
	all, hashes = all[:n], hashes[:n]
	for _, s := range all {
		if s.Verdict.Verified() {
			st.Verified++
		}
	}
	if err := b.writeLists(root, &man, all, hashes, changedTargets, changedRequests); err != nil {
		return st, b.explain(err)
	}
	if err := writeManifest(root, &man); err != nil {
		return st, b.explain(err)
	}
	st.Took = time.Since(start)
	return st, nil
}

// listStates are the states with a list of their own, in the order of
// the links to them (and of writeLists' switch).
var listStates = [...]queue.State{queue.Failure, queue.Error, queue.Cancelled, queue.Running, queue.Success}

// runList is a list of runs, with the hash of each.
type runList struct {
	runs   []render.RunSummary
	hashes []uint64
}

// inSet returns the test of membership in set: a few comparisons when it
// is small (a build after one new run changes one target and a request
// or two), which cost less than hashing each of 100,000 strings.
func inSet(set map[string]bool) func(string) bool {
	if len(set) > 8 {
		return func(s string) bool { return set[s] }
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	return func(s string) bool { return slices.Contains(keys, s) }
}

// siteRun is a run ref of the repository: its name, the target and run
// id it names, and its commit.
type siteRun struct {
	ref, target, run string
	commit           gitproto.Hash
}

// listRuns lists the run refs of repo in the order of the site's lists:
// newest run id first (then by ref, the larger first), those dated in
// the future too. (results.List puts those last, for other readers.)
// They are sorted by the number the first 15 characters of the run id
// spell (YYYYMMDDTHHMMSS, digits but for the T), which orders them as
// those characters do, then by the rest.
func listRuns(repo *gitproto.Repo) ([]siteRun, error) {
	refs, err := repo.Refs(queue.RunsPrefix)
	if err != nil {
		return nil, err
	}
	type sortKey struct {
		key uint64
		i   int32
	}
	keys := make([]sortKey, 0, len(refs))
	parsed := make([]siteRun, 0, len(refs))
	for _, r := range refs {
		t, id, ok := queue.ParseRunRef(r.Name)
		if !ok {
			continue
		}
		var key uint64
		for i := 0; i < 15; i++ {
			if c := id[i]; c >= '0' && c <= '9' { // id[8] is the T
				key = key*10 + uint64(c-'0')
			}
		}
		keys = append(keys, sortKey{key, int32(len(parsed))})
		parsed = append(parsed, siteRun{ref: r.Name, target: t, run: id, commit: r.Hash})
	}
	// Sorting 16-byte keys, not the runs, and comparing strings only
	// between runs of one second: a third of the time at 100,000 runs.
	slices.SortFunc(keys, func(a, b sortKey) int {
		if c := cmp.Compare(b.key, a.key); c != 0 {
			return c
		}
		ra, rb := &parsed[a.i], &parsed[b.i]
		return cmp.Or(strings.Compare(rb.run, ra.run), strings.Compare(rb.ref, ra.ref))
	})
	out := make([]siteRun, len(keys))
	for k, sk := range keys {
		out[k] = parsed[sk.i]
	}
	return out, nil
}

// renderJob is one run to render; by, when set, is the run that took it
// over after its worker was lost; target, when known, describes the
// commit it ran on.
type renderJob struct {
	ref    string
	commit gitproto.Hash
	by     *render.RunSummary
	target *render.CommitInfo
}

// readCommits reads the subject and author of the target commit of each
// run of todo that known does not describe yet, from the repository (a
// commit it does not have is skipped), and points each job at its
// commit's description. The text is the pusher's: shown escaped, never
// used as a path, a URL or to decide anything.
func (b *Builder) readCommits(repo *gitproto.Repo, man *manifest, todo []renderJob) {
	missing := map[string]bool{}
	for i := range todo {
		t, _, ok := queue.ParseRunRef(todo[i].ref)
		if !ok || missing[t] {
			continue
		}
		info, ok := man.Commits[t]
		if !ok {
			c, err := repo.Commit(gitproto.NewHash(t))
			if err != nil {
				missing[t] = true
				continue
			}
			info = render.CommitInfoOf(c.Message, c.Author.Name, c.Author.When)
			man.setCommit(t, info)
		}
		todo[i].target = &info
	}
}

type rendered struct {
	ref string
	sum render.RunSummary
	err error
}

// renderAll renders the runs of todo, several at once (one gitproto.Repo
// each: it is not safe for concurrent use).
func (b *Builder) renderAll(root *os.Root, todo []renderJob) []rendered {
	if len(todo) == 0 {
		return nil
	}
	workers := b.workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	jobs := make(chan renderJob)
	results := make(chan rendered)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := gitproto.Open(b.gitDir)
			for j := range jobs {
				if err != nil {
					results <- rendered{ref: j.ref, err: err}
					continue
				}
				sum, err := b.renderRun(r, root, j.ref, j.commit, j.by, j.target)
				results <- rendered{j.ref, sum, err}
			}
		}()
	}
	go func() {
		for _, j := range todo {
			jobs <- j
		}
		close(jobs)
		wg.Wait()
		close(results)
	}()
	var out []rendered
	for d := range results {
		out = append(out, d)
	}
	return out
}

// lostChanged returns the runs of all (the summaries of man's runs, in
// a slice: two passes over it cost less than over the map) whose being
// lost (queue.TakenOver) is not what their pages show. Only attempts
// that took a run over, the runs they name and the runs shown as lost
// are looked at: a site of runs that all ended costs two passes over
// all, with no allocation per run. Only verified
// runs take part: a result nobody vouches for may not make another look
// lost.
func lostChanged(man *manifest, all []render.RunSummary) []renderJob {
	named := map[string]bool{} // the ref of every run a later attempt names
	for _, s := range all {
		if s.PreviousRun != "" && s.Verdict.Verified() {
			named[queue.RunRef(s.Target, s.PreviousRun)] = true
		}
	}
	var sts []*queue.Status
	refOf := map[*queue.Status]string{}
	sumOf := map[string]render.RunSummary{} // by the run ref its status names
	for _, s := range all {
		if !s.Verdict.Verified() || s.PreviousRun == "" && s.LostTo == "" && (len(named) == 0 || !named[queue.RunRef(s.Target, s.Run)]) {
			continue
		}
		ref := s.Ref
		st := &queue.Status{Target: s.Target, Request: s.Request, Run: s.Run, Attempt: s.Attempt, State: s.State}
		if s.LostTo != "" {
			st.State = queue.Running // shown as lost; its status.json says running
		}
		if s.PreviousRun != "" {
			st.Extra = map[string]any{queue.ExtraPreviousRun: s.PreviousRun}
		}
		sts = append(sts, st)
		refOf[st] = ref
		sumOf[queue.RunRef(s.Target, s.Run)] = s
	}
	lost := queue.TakenOver(sts) // the rule of results.TakenOverBy, on the manifest's summaries
	var todo []renderJob
	for st, ref := range refOf {
		s := man.Runs[ref]
		var by *render.RunSummary
		want := ""
		if b := lost[queue.RunRef(st.Target, st.Run)]; b != nil {
			sum := sumOf[queue.RunRef(b.Target, b.Run)]
			by, want = &sum, b.Run
		}
		if s.LostTo != want {
			j := renderJob{ref: ref, commit: gitproto.NewHash(s.Commit), by: by}
			if c, ok := man.Commits[s.Target]; ok {
				j.target = &c
			}
			todo = append(todo, j)
		}
	}
	return todo
}

// renderRun writes one run's directory, runs/<target>/<run> as its ref
// names them: its page, status.json, log and, when status.json is valid,
// the jobs' logs and the artifacts.
func (b *Builder) renderRun(repo *gitproto.Repo, root *os.Root, ref string, commit gitproto.Hash, by *render.RunSummary, tc *render.CommitInfo) (render.RunSummary, error) {
	target, runID, ok := queue.ParseRunRef(ref)
	if !ok {
		return render.RunSummary{}, fmt.Errorf("%s is not a run ref", queue.Printable(ref))
	}
	// One commit and tree lookup for every file of the run.
	c, err := repo.Commit(commit)
	if err != nil {
		return render.RunSummary{}, err
	}
	tree, err := repo.Tree(c)
	if err != nil {
		return render.RunSummary{}, err
	}
	read := tree.ReadFile
	// Not results.Read: a result it does not believe is shown too, with
	// its verdict.
	rawStatus, err := read(queue.StatusFile)
	if err != nil {
		return render.RunSummary{}, fmt.Errorf("result %s: %s: %w", commit.String()[:12], queue.StatusFile, err)
	}
	st, err := queue.DecodeStatus(rawStatus)
	if err != nil {
		return render.RunSummary{}, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	v := verdictOf(b.keys, ref, c.Message, st, func() (secrets.Signer, error) { return results.SignedBy(b.keys, c) })
	valid := v.Kind != render.VerdictInvalid
	shown := st
	if !valid {
		// Shown escaped, with no link and no file made from its values.
		cp := *st
		cp.Artifacts, cp.ArtifactsSkipped = nil, nil
		for _, a := range st.Artifacts {
			cp.ArtifactsSkipped = append(cp.ArtifactsSkipped, queue.SkippedArtifact{Path: a.Path, Reason: "not copied: this result is invalid"})
		}
		cp.ArtifactsSkipped = append(cp.ArtifactsSkipped, st.ArtifactsSkipped...)
		shown = &cp
	}
	links := [][2]string{{"history of " + target[:12], "../../../commits/" + target + ".html"}}
	if by != nil {
		shown = queue.Lost(shown, by.Run, by.Attempt) // the page and the lists say so; status.json stays as stored
		links = append(links, [2]string{"taken over by attempt " + strconv.Itoa(by.Attempt), "../../../" + by.Href})
	}
	rel := path.Join("runs", target, runID)
	// Written into a fresh directory, then renamed into place: nobody
	// reads it before the rename, so plain writes suffice.
	if err := root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return render.RunSummary{}, err
	}
	dir := path.Join(tmpDir, "run-"+tmpSuffix())
	if err := mkdirTmp(root, dir); err != nil {
		return render.RunSummary{}, err
	}
	defer root.RemoveAll(dir) // after a successful rename, nothing is left there
	res := render.Result{Status: shown, Ref: ref, Commit: commit.String(), JobLogs: map[string][]byte{}}
	files := map[string][]byte{}
	files[queue.StatusFile] = rawStatus
	if res.Log, err = read(queue.LogFile); err == nil {
		files[queue.LogFile] = res.Log
	}
	if valid {
		for _, j := range st.Jobs {
			if l, err := read(queue.JobLogPath(j.Name)); err == nil {
				res.JobLogs[j.Name] = l
				files[queue.JobLogPath(j.Name)] = l
			}
		}
	}
	// The artifacts first: the page links only those that are there, as
	// it does the logs.
	copied := map[string]bool{}
	if valid {
		for _, a := range st.Artifacts {
			if queue.ValidateArtifactPath(a.Path) != nil {
				continue // Validate said so already; checked again where it becomes a path
			}
			p := queue.ArtifactsDir + "/" + a.Path
			if err := copyBlob(repo, root, commit, p, path.Join(dir, p)); err != nil {
				if b.warn != nil {
					b.warn(fmt.Sprintf("%s: artifact %s: %v", ref, queue.Printable(a.Path), err))
				}
				continue
			}
			copied[p] = true
		}
	}
	stored := func(p string) bool {
		_, ok := files[p]
		return ok || copied[p]
	}
	page, err := render.HTML(res, render.HTMLOptions{Home: "../../../index.html", Links: links, Verdict: &v, Commit: tc, Stored: stored})
	if err != nil {
		return render.RunSummary{}, err
	}
	files[queue.IndexFile] = page
	for p, data := range files {
		full := path.Join(dir, p)
		if err := root.MkdirAll(path.Dir(full), 0o755); err != nil {
			return render.RunSummary{}, err
		}
		if err := writeNew(root, full, data); err != nil {
			return render.RunSummary{}, err
		}
	}
	if err := root.RemoveAll(rel); err != nil {
		return render.RunSummary{}, err
	}
	if err := root.Rename(dir, rel); err != nil {
		return render.RunSummary{}, err
	}
	sum := render.SummaryOf(shown, ref, commit.String(), rel+"/index.html")
	sum.Target, sum.Run = target, runID                    // where it was found, whatever it claims
	sum.Verdict = render.Verdict{Kind: v.Kind, Why: v.Why} // who signed is on the run page; the lists need not carry it
	if by != nil {
		sum.LostTo = by.Run
	}
	if tc != nil {
		sum.Subject, sum.Author = tc.Subject, tc.Author
	}
	return sum, nil
}

// writeLists writes the list pages, the changed commits' pages and the
// changed requests' badges. The latest run of a request is its newest
// verified run not dated in the future; a request with runs but none such
// gets a grey "not verified" badge.
//
// The list of every run (index.html), of each state (state-<state>.html)
// and of each commit (commits/<target>.html) show the newest
// Options.PageSize runs (the first two with the latest of each request)
// and link the older pages (page-<n>.html, state-<state>-page-<n>.html,
// commits/<target>-page-<n>.html). Those pages are numbered from the
// oldest run, so that a new run changes only the newest of them and the
// front page, and a page's address keeps its runs: a page is written
// only when its fingerprint (the hashes of its runs' summaries, and its
// links) changed, or when it is missing. An older page says neither how
// many pages nor how many runs the list has (its front page does), so
// that it stays as it is when the list grows.
func (b *Builder) writeLists(root *os.Root, man *manifest, all []render.RunSummary, hashes []uint64, targets, requests map[string]bool) error {
	now := time.Now()
	sec := now.UTC().Format("20060102T150405")
	for i := range all {
		// One comparison for a run not after now's second (its id is
		// valid: it comes from its ref), else the full rule.
		s := &all[i]
		s.NotLatest = len(s.Run) < 15 || s.Run[:15] > sec && queue.RunIDFuture(s.Run, now)
	}
	// The lists of the states that have one, by their index in
	// listStates.
	var counts [len(listStates)]int
	stateOf := make([]int8, len(all))
	for i := range all {
		k := int8(-1) // not a state refci writes: on no state's list
		switch all[i].State {
		case queue.Failure:
			k = 0
		case queue.Error:
			k = 1
		case queue.Cancelled:
			k = 2
		case queue.Running:
			k = 3
		case queue.Success:
			k = 4
		}
		stateOf[i] = k
		if k >= 0 {
			counts[k]++
		}
	}
	var byState [len(listStates)]runList
	for k, n := range counts {
		// grown once: 100,000 summaries are 30 MB
		byState[k] = runList{make([]render.RunSummary, 0, n), make([]uint64, 0, n)}
	}
	byTarget := map[string]*runList{}
	for t := range targets {
		byTarget[t] = &runList{}
	}
	isTarget, isRequest := inSet(targets), inSet(requests)
	latest := map[string]render.RunSummary{}
	hasRuns := map[string]bool{}
	for i, s := range all {
		if k := stateOf[i]; k >= 0 {
			l := &byState[k]
			l.runs, l.hashes = append(l.runs, s), append(l.hashes, hashes[i])
		}
		if isTarget(s.Target) {
			l := byTarget[s.Target]
			l.runs, l.hashes = append(l.runs, s), append(l.hashes, hashes[i])
		}
		// Only the changed requests' badges are written.
		if isRequest(s.Request) {
			hasRuns[s.Request] = true
			if _, ok := latest[s.Request]; !ok && s.Verdict.Verified() && !s.NotLatest {
				latest[s.Request] = s
			}
		}
	}
	// Every page links every state's list, whether it has runs or not:
	// a page this build does not write again (an untouched commit's, an
	// older page) must not link a list that a later build removes, nor
	// lack one that a later build adds.
	states := make([]string, len(listStates))
	for k, s := range listStates {
		states[k] = string(s)
	}
	write := func(name string, p render.ListPage) error {
		p.States = states
		page, err := render.List(p)
		if err != nil {
			return err
		}
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		return writeAtomic(root, name, page)
	}
	oldPages := man.Pages
	man.Pages = map[string][]string{}
	// list writes the front page of a list, name+".html", and its older
	// pages, or removes them all when it is empty. front holds what the
	// front page shows beyond its runs: Filter, and Root (the way from
	// the list's folder to the site's) and Commit, which its older pages
	// share.
	list := func(name, title string, l runList, front render.ListPage) error {
		runs := l.runs
		n := len(runs)
		count := 0 // older pages
		if n > b.page {
			count = (n + b.page - 1) / b.page
		}
		pageFile := func(k int) string { return name + "-page-" + strconv.Itoa(k) + ".html" }
		if name == "index" {
			pageFile = func(k int) string { return "page-" + strconv.Itoa(k) + ".html" }
		}
		for k := count + 1; k <= len(oldPages[name]); k++ {
			root.Remove(pageFile(k))
		}
		if n == 0 && strings.HasPrefix(name, "commits/") {
			root.Remove(name + ".html")
			return nil
		}
		front.Title, front.Runs, front.All = title, runs[:min(n, b.page)], runs
		if count > 0 {
			front.Older = pageFile((n-b.page-1)/b.page + 1)
			front.PageNote = fmt.Sprintf("the newest %d of %d runs", b.page, n)
		}
		if err := write(name+".html", front); err != nil {
			return err
		}
		fps := make([]string, 0, count)
		h := fnv.New64a()
		var buf [8]byte
		for k := 1; k <= count; k++ {
			lo, hi := (k-1)*b.page, min(k*b.page, n) // counted from the oldest
			page := runs[n-hi : n-lo]
			h.Reset()
			// Not the number of pages, nor of runs: a page says neither, so
			// that it is written again only when its runs, its link to the
			// newer page (the last links the front page) or the states'
			// links change, not each time the list grows by a page.
			fmt.Fprintf(h, "%d %t %s\n", k, k == count, strings.Join(states, ","))
			for i, s := range page {
				binary.LittleEndian.PutUint64(buf[:], l.hashes[n-hi+i])
				h.Write(buf[:])
				if s.NotLatest {
					h.Write([]byte{1})
				}
			}
			fp := strconv.FormatUint(h.Sum64(), 36)
			fps = append(fps, fp)
			if old := oldPages[name]; !man.relist && k <= len(old) && old[k-1] == fp {
				if _, err := root.Stat(pageFile(k)); err == nil {
					continue
				}
			}
			p := render.ListPage{Title: fmt.Sprintf("%s · page %d", title, k), Root: front.Root, Commit: front.Commit, Runs: page, Page: k,
				PageNote: fmt.Sprintf("runs %d-%d, counted from the oldest", lo+1, hi), Newer: name + ".html"}
			if k < count {
				p.Newer = pageFile(k + 1)
			}
			if k > 1 {
				p.Older = pageFile(k - 1)
			}
			if err := write(pageFile(k), p); err != nil {
				return err
			}
		}
		if count > 0 || !strings.HasPrefix(name, "commits/") {
			man.Pages[name] = fps
		}
		return nil
	}
	if err := list("index", "refci: all runs", runList{all, hashes}, render.ListPage{Filter: true}); err != nil {
		return err
	}
	// A state's list is there when no run is in that state, saying so,
	// as every page links it.
	for k, s := range listStates {
		front := render.ListPage{NoRuns: "No run is in state " + string(s) + "."}
		if err := list("state-"+string(s), "refci: runs in state "+string(s), byState[k], front); err != nil {
			return err
		}
	}
	// A commit's history is paginated as the other lists are, its pages
	// commits/<target>-page-<n>.html; only the commits with more than a
	// page of runs have fingerprints, and those of the commits this build
	// did not touch are kept.
	for name, fps := range oldPages {
		if t, ok := strings.CutPrefix(name, "commits/"); ok && !targets[t] {
			man.Pages[name] = fps
		}
	}
	for t := range targets {
		if !queue.IsObjectID(t) {
			continue // not from a run ref: not a file name
		}
		title := "refci: runs of " + t
		if c := man.Commits[t]; c.Subject != "" {
			title += " · " + c.Subject // escaped by the page
		}
		if err := list("commits/"+t, title, *byTarget[t], render.ListPage{Root: "../", Commit: t}); err != nil {
			return err
		}
	}
	for r := range requests {
		if queue.ValidateRequestName(r) != nil {
			continue // not a safe file name
		}
		name := "badges/" + r + ".svg"
		var svg []byte
		if s, ok := latest[r]; ok {
			svg = render.Badge("refci "+r, s.State)
		} else if hasRuns[r] {
			svg = render.BadgeNoVerified("refci " + r)
		} else {
			root.Remove(name)
			continue
		}
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		if err := writeAtomic(root, name, svg); err != nil {
			return err
		}
	}
	return nil
}

// tmpSuffix names a temporary file or directory in the site.
func tmpSuffix() string { return strconv.FormatUint(rand.Uint64(), 36) }

// tmpDir is where a build writes what it then renames into place: a run's
// directory, a page. What a stopped build left there is removed by the
// next (Build), so that no half-written file stays in the site.
const tmpDir = ".tmp"

// mkdirTmp makes the directory name in tmpDir, and tmpDir when missing.
func mkdirTmp(root *os.Root, name string) error {
	err := root.Mkdir(name, 0o755)
	if errors.Is(err, os.ErrNotExist) {
		if err := root.Mkdir(tmpDir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		err = root.Mkdir(name, 0o755)
	}
	return err
}

// copyBlob streams a file of a result tree to dst, a new file under root.
func copyBlob(repo *gitproto.Repo, root *os.Root, commit gitproto.Hash, src, dst string) error {
	rc, err := repo.OpenFile(commit, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := root.MkdirAll(path.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := root.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, cerr := io.Copy(f, rc)
	return errors.Join(cerr, f.Chmod(0o644), f.Close())
}

// writeNew writes data to name, a file that must not exist yet, under
// root (O_EXCL: not through a link).
func writeNew(root *os.Root, name string, data []byte) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	return errors.Join(werr, f.Chmod(0o644), f.Close())
}

// writeAtomic replaces name under root with data by writing a new
// temporary file in tmpDir and renaming it: a link at name is replaced,
// never followed.
func writeAtomic(root *os.Root, name string, data []byte) error {
	tmp := path.Join(tmpDir, tmpSuffix())
	err := writeNew(root, tmp, data)
	if errors.Is(err, os.ErrNotExist) {
		if err := root.Mkdir(tmpDir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		err = writeNew(root, tmp, data)
	}
	if err != nil {
		root.Remove(tmp)
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}
