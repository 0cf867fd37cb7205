package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// renderPage is the worker's page hook: index.html of each result tree.
func renderPage(st *queue.Status, log []byte, jobLogs map[string][]byte) ([]byte, error) {
	return render.HTML(render.Result{Status: st, Log: log, JobLogs: jobLogs, Ref: queue.RunRef(st.Target, st.Run)}, render.HTMLOptions{})
}

func cmdView(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "view", "[--repo DIR] [-o DIR] [--open]")
	repoDir := fs.String("repo", ".", "the repository")
	out := fs.String("o", "", "where to write the site (default: refci-view/ in the repository's git directory)")
	open := fs.Bool("open", false, "open the site's index.html in a browser (xdg-open)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(repo.GitDir(), "refci-view")
	}
	b := &siteBuilder{RepoDir: repo.GitDir(), Out: dir, Warn: func(msg string) { e.errorf("%s", msg) }}
	st, err := b.Build()
	if err != nil {
		e.errorf("view: %v", err)
		return exitInfra
	}
	index := filepath.Join(dir, "index.html")
	fmt.Fprintf(e.stdout, "refci: %d runs (%d rendered, %d removed) in %s\n%s\n", st.Runs, st.Rendered, st.Removed, st.Took.Round(time.Millisecond), index)
	if st.Runs == 0 {
		fmt.Fprintf(e.stderr, "refci: no runs here; fetch results with: git fetch origin '+refs/ci/*:refs/ci/*'\n")
	}
	if *open {
		if p, err := exec.LookPath("xdg-open"); err == nil {
			cmd := exec.Command(p, index)
			if err := cmd.Start(); err != nil {
				e.errorf("xdg-open: %v; open %s yourself", err, index)
				return exitOK
			}
			go cmd.Wait()
		} else {
			fmt.Fprintf(e.stderr, "refci: no xdg-open here; open %s in a browser\n", index)
		}
	}
	return exitOK
}

// siteBuilder writes the static site of every refs/ci/runs/* of one
// repository into Out: index.html (every run, newest first, with the
// latest state of each request and since when), state-<state>.html, a
// page per commit (commits/<target>.html) with its run history, a page
// per run (runs/<target>/<run>/index.html, rendered by render.HTML with
// the logs, status.json and artifacts next to it) and a badge per request
// (badges/<request>.svg).
//
// Builds are incremental: manifest.json in Out records each run ref's
// commit; a build renders only runs that are new or changed, removes
// runs whose ref is gone, and rewrites the list pages only when something
// changed. Files are replaced by rename, so a server reading Out (refci
// serve --http) never sees half a file. The run pages are always
// refci's own rendering; a repository's .refci/viewer is not used here.
//
// A siteBuilder may be shared: Build calls are serialised. The zero
// value is not usable; set RepoDir and Out.
type siteBuilder struct {
	RepoDir string // the git directory
	Out     string
	Workers int              // runs rendered at once (default: CPUs)
	Warn    func(msg string) // problems with single runs (nil: ignored)
	mu      sync.Mutex
}

// siteStats says what one Build did.
type siteStats struct {
	Runs, Rendered, Removed int
	Took                    time.Duration
}

const manifestFile = "manifest.json"

// siteFormat is the manifest's version; a site built with another is
// built again from scratch. 2: summaries know attempts and lost runs.
const siteFormat = 2

type siteManifest struct {
	Format int                          `json:"format"`
	Runs   map[string]render.RunSummary `json:"runs"` // by run ref
}

// Build brings Out up to date with the repository's run refs.
func (b *siteBuilder) Build() (siteStats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	start := time.Now()
	var st siteStats
	repo, err := gitproto.Open(b.RepoDir)
	if err != nil {
		return st, err
	}
	refs, err := repo.Refs(queue.RunsPrefix)
	if err != nil {
		return st, err
	}
	if err := os.MkdirAll(b.Out, 0o755); err != nil {
		return st, err
	}
	man := siteManifest{Format: siteFormat, Runs: map[string]render.RunSummary{}}
	if raw, err := os.ReadFile(filepath.Join(b.Out, manifestFile)); err == nil {
		var m siteManifest
		if json.Unmarshal(raw, &m) == nil && m.Format == siteFormat && m.Runs != nil {
			man = m
		}
	}
	var todo []renderJob
	live := map[string]bool{}
	for _, r := range refs {
		if _, _, ok := queue.ParseRunRef(r.Name); !ok {
			continue
		}
		live[r.Name] = true
		if old, ok := man.Runs[r.Name]; ok && old.Commit == r.Hash.String() {
			continue
		}
		todo = append(todo, renderJob{ref: r.Name, commit: r.Hash})
	}
	changedTargets := map[string]bool{}
	changedRequests := map[string]bool{}
	for ref, sum := range man.Runs {
		if live[ref] {
			continue
		}
		target, run, _ := queue.ParseRunRef(ref)
		if err := os.RemoveAll(filepath.Join(b.Out, "runs", target, run)); err != nil {
			return st, err
		}
		delete(man.Runs, ref)
		changedTargets[sum.Target] = true
		changedRequests[sum.Request] = true
		st.Removed++
	}
	renderedRefs := map[string]bool{} // a lost run may be rendered twice
	record := func(d rendered) {
		if d.err != nil {
			if b.Warn != nil {
				b.Warn(fmt.Sprintf("%s: %v", d.ref, d.err))
			}
			return
		}
		if old, ok := man.Runs[d.ref]; ok {
			changedRequests[old.Request] = true
		}
		man.Runs[d.ref] = d.sum
		changedTargets[d.sum.Target] = true
		changedRequests[d.sum.Request] = true
		renderedRefs[d.ref] = true
	}
	for _, d := range b.renderAll(todo) {
		record(d)
	}
	// Runs whose worker was lost are rendered again as lost once the
	// attempt that took them over is here (and as they are, should that
	// attempt go away).
	for _, d := range b.renderAll(lostChanged(man)) {
		record(d)
	}
	st.Rendered = len(renderedRefs)
	st.Runs = len(man.Runs)
	_, statErr := os.Stat(filepath.Join(b.Out, "index.html"))
	if len(changedTargets) == 0 && len(changedRequests) == 0 && statErr == nil {
		st.Took = time.Since(start)
		return st, nil
	}
	if err := b.writeLists(man, changedTargets, changedRequests); err != nil {
		return st, err
	}
	raw, err := json.Marshal(man)
	if err != nil {
		return st, err
	}
	if err := writeAtomic(filepath.Join(b.Out, manifestFile), raw); err != nil {
		return st, err
	}
	st.Took = time.Since(start)
	return st, nil
}

// renderJob is one run to render; by, when set, is the run that took it
// over after its worker was lost.
type renderJob struct {
	ref    string
	commit gitproto.Hash
	by     *render.RunSummary
}

type rendered struct {
	ref string
	sum render.RunSummary
	err error
}

// renderAll renders the runs of todo, several at once (one go-git
// repository each: it is not safe for concurrent use).
func (b *siteBuilder) renderAll(todo []renderJob) []rendered {
	if len(todo) == 0 {
		return nil
	}
	workers := b.Workers
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
			r, err := gitproto.Open(b.RepoDir)
			for j := range jobs {
				if err != nil {
					results <- rendered{ref: j.ref, err: err}
					continue
				}
				sum, err := b.renderRun(r, j.ref, j.commit, j.by)
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

// lostChanged returns the runs of man whose being lost (queue.TakenOver)
// is not what their pages show. Only attempts that took a run over, the
// runs they name and the runs shown as lost are looked at: a site of
// runs that all ended costs two passes over the manifest.
func lostChanged(man siteManifest) []renderJob {
	named := map[string]bool{} // the ref of every run a later attempt names
	for _, s := range man.Runs {
		if s.PreviousRun != "" {
			named[queue.RunRef(s.Target, s.PreviousRun)] = true
		}
	}
	var sts []*queue.Status
	refOf := map[*queue.Status]string{}
	sumOf := map[string]render.RunSummary{} // by the run ref its status names
	for ref, s := range man.Runs {
		if s.PreviousRun == "" && s.LostTo == "" && !named[queue.RunRef(s.Target, s.Run)] {
			continue
		}
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
	lost := queue.TakenOver(sts)
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
			todo = append(todo, renderJob{ref: ref, commit: gitproto.NewHash(s.Commit), by: by})
		}
	}
	return todo
}

// renderRun writes one run's directory: its page, status.json, logs and
// artifacts.
func (b *siteBuilder) renderRun(repo *gitproto.Repo, ref string, commit gitproto.Hash, by *render.RunSummary) (render.RunSummary, error) {
	target, runID, _ := queue.ParseRunRef(ref)
	// One commit and tree lookup for every file of the run.
	c, err := repo.Commit(commit)
	if err != nil {
		return render.RunSummary{}, err
	}
	tree, err := c.Tree()
	if err != nil {
		return render.RunSummary{}, fmt.Errorf("tree of %s: %w", commit, err)
	}
	read := func(p string) ([]byte, error) {
		f, err := tree.File(p)
		if err != nil {
			return nil, err
		}
		rd, err := f.Reader()
		if err != nil {
			return nil, err
		}
		defer rd.Close()
		return io.ReadAll(rd)
	}
	rawStatus, err := read(queue.StatusFile)
	if err != nil {
		return render.RunSummary{}, fmt.Errorf("result %s: %s: %w", commit.String()[:12], queue.StatusFile, err)
	}
	st, err := queue.DecodeStatus(rawStatus)
	if err != nil {
		return render.RunSummary{}, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	links := [][2]string{{"history of " + target[:12], "../../../commits/" + target + ".html"}}
	if by != nil {
		st = queue.Lost(st, by.Run, by.Attempt) // the page and the lists say so; status.json stays as stored
		links = append(links, [2]string{"taken over by attempt " + strconv.Itoa(by.Attempt), "../../../" + by.Href})
	}
	rel := path.Join("runs", target, runID)
	final := filepath.Join(b.Out, filepath.FromSlash(rel))
	// Written into a fresh directory, then renamed into place: nobody
	// reads it before the rename, so plain writes suffice.
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return render.RunSummary{}, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(final), ".tmp-"+runID+"-")
	if err != nil {
		return render.RunSummary{}, err
	}
	defer os.RemoveAll(dir) // after a successful rename, nothing is left there
	if err := os.Chmod(dir, 0o755); err != nil {
		return render.RunSummary{}, err
	}
	res := render.Result{Status: st, Ref: ref, Commit: commit.String(), JobLogs: map[string][]byte{}}
	files := map[string][]byte{}
	files[queue.StatusFile] = rawStatus
	if res.Log, err = read(queue.LogFile); err == nil {
		files[queue.LogFile] = res.Log
	}
	for _, j := range st.Jobs {
		if queue.ValidateJobName(j.Name) != nil {
			continue
		}
		if l, err := read(queue.JobLogPath(j.Name)); err == nil {
			res.JobLogs[j.Name] = l
			files[queue.JobLogPath(j.Name)] = l
		}
	}
	page, err := render.HTML(res, render.HTMLOptions{Home: "../../../index.html", Links: links})
	if err != nil {
		return render.RunSummary{}, err
	}
	files["index.html"] = page
	for p, data := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return render.RunSummary{}, err
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			return render.RunSummary{}, err
		}
	}
	for _, a := range st.Artifacts {
		if !safeRelPath(a.Path) {
			continue
		}
		if err := copyBlob(repo, commit, queue.ArtifactsDir+"/"+a.Path, filepath.Join(dir, queue.ArtifactsDir, filepath.FromSlash(a.Path))); err != nil && b.Warn != nil {
			b.Warn(fmt.Sprintf("%s: artifact %s: %v", ref, a.Path, err))
		}
	}
	if err := os.RemoveAll(final); err != nil {
		return render.RunSummary{}, err
	}
	if err := os.Rename(dir, final); err != nil {
		return render.RunSummary{}, err
	}
	sum := render.SummaryOf(st, ref, commit.String(), rel+"/index.html")
	if by != nil {
		sum.LostTo = by.Run
	}
	return sum, nil
}

// writeLists writes the list pages, the changed commits' pages and the
// changed requests' badges.
func (b *siteBuilder) writeLists(man siteManifest, targets, requests map[string]bool) error {
	all := make([]render.RunSummary, 0, len(man.Runs))
	for _, s := range man.Runs {
		all = append(all, s)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].Run != all[j].Run {
			return all[i].Run > all[j].Run
		}
		return all[i].Ref > all[j].Ref
	})
	byState := map[queue.State][]render.RunSummary{}
	byTarget := map[string][]render.RunSummary{}
	latest := map[string]render.RunSummary{}
	for _, s := range all {
		byState[s.State] = append(byState[s.State], s)
		if targets[s.Target] {
			byTarget[s.Target] = append(byTarget[s.Target], s)
		}
		if _, ok := latest[s.Request]; !ok {
			latest[s.Request] = s
		}
	}
	var states []string
	for _, s := range []queue.State{queue.Failure, queue.Error, queue.Cancelled, queue.Running, queue.Success} {
		if len(byState[s]) > 0 {
			states = append(states, string(s))
		}
	}
	write := func(name string, p render.ListPage) error {
		p.States = states
		page, err := render.List(p)
		if err != nil {
			return err
		}
		full := filepath.Join(b.Out, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		return writeAtomic(full, page)
	}
	if err := write("index.html", render.ListPage{Title: "refci: all runs", Runs: all, Filter: true}); err != nil {
		return err
	}
	for _, s := range []queue.State{queue.Failure, queue.Error, queue.Cancelled, queue.Running, queue.Success} {
		name := "state-" + string(s) + ".html"
		if len(byState[s]) == 0 {
			os.Remove(filepath.Join(b.Out, name))
			continue
		}
		if err := write(name, render.ListPage{Title: "refci: runs in state " + string(s), Runs: byState[s]}); err != nil {
			return err
		}
	}
	for t := range targets {
		name := "commits/" + t + ".html"
		if len(byTarget[t]) == 0 {
			os.Remove(filepath.Join(b.Out, name))
			continue
		}
		if err := write(name, render.ListPage{Title: "refci: runs of " + t, Root: "../", Runs: byTarget[t], Commit: t}); err != nil {
			return err
		}
	}
	for r := range requests {
		if queue.ValidateRequestName(r) != nil {
			continue // not a safe file name
		}
		p := filepath.Join(b.Out, "badges", filepath.FromSlash(r)+".svg")
		s, ok := latest[r]
		if !ok {
			os.Remove(p)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeAtomic(p, render.Badge("refci "+r, s.State)); err != nil {
			return err
		}
	}
	return nil
}

// safeRelPath accepts slash-separated relative paths that stay inside
// their directory and name nothing git would take for .git.
func safeRelPath(p string) bool {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || len(p) > 4096 {
		return false
	}
	for _, seg := range splitSlash(p) {
		if seg == ".." || seg == "." || gitproto.IsDotGitName(seg) {
			return false
		}
	}
	return true
}

func splitSlash(p string) []string {
	var out []string
	for {
		i := 0
		for i < len(p) && p[i] != '/' {
			i++
		}
		out = append(out, p[:i])
		if i == len(p) {
			return out
		}
		p = p[i+1:]
	}
}

// copyBlob streams a file of a result tree to dst.
func copyBlob(repo *gitproto.Repo, commit gitproto.Hash, src, dst string) error {
	rc, err := repo.OpenFile(commit, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}

// writeAtomic replaces name with data by writing a temporary file and
// renaming it.
func writeAtomic(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), name)
}
