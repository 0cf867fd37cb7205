package results

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// What the readers of runs show a person in a terminal: a line of a list
// of runs, a job's log, the events of a followed run. Text from the
// repository or the remote is made safe to print (render.Safe).

// Line is the run's line in a list of runs (refci runs): render.RunLine
// of its status, with why it is not believed, that it is dated in the
// future, or which attempt took its request over after its worker was
// lost.
func (l Listed) Line(color bool) string {
	switch {
	case l.Err != nil:
		return fmt.Sprintf("%s  %s  %s", l.ID, l.Target[:min(12, len(l.Target))], Problem(l.Err))
	case l.Future:
		return render.RunLine(l.Status, color) + "  (dated in the future: never the latest)"
	case l.TakenOverBy != nil:
		return render.RunLine(l.Shown(), color) + "  worker lost, taken over by " + render.Safe(l.TakenOverBy.Run)
	}
	return render.RunLine(l.Status, color)
}

// ErrPastLastPage is matched by ListPage's error for a page past the
// last one; the error says how many runs and pages there are.
var ErrPastLastPage = errors.New("page past the last one")

// Page is one page of a list of runs, newest first (ListPage).
type Page struct {
	Target string   // the commit whose runs are listed; "" for all
	Runs   []Listed // the page's runs, read (ReadPage)
	From   int      // the index of its first run among all, from 0
	Total  int      // how many runs the whole list has
	Size   int      // runs a page; 0: the page is the whole list
	N      int      // which page it is, from 1
}

// ListPage lists the runs of target ("" for all), newest first (List),
// and reads page n, from 1, of size of them (size 0: all of them).
// Run ids sort by start time, so the page is found from the ref names
// alone: only its statuses are read. A page past the last one is
// ErrPastLastPage (but the first of an empty list is empty).
func ListPage(repo *gitproto.Repo, target string, size, n int) (Page, error) {
	runs, err := List(repo, target)
	if err != nil {
		return Page{}, err
	}
	p := Page{Target: target, Total: len(runs), Size: size, N: n}
	if size > 0 {
		p.From = min((n-1)*size, len(runs))
		to := min(p.From+size, len(runs))
		if p.From == to && len(runs) > 0 {
			return p, wrap(fmt.Sprintf("page %d is past the last one (%d runs, %d a page)", n, len(runs), size), ErrPastLastPage)
		}
		runs = runs[p.From:to]
	}
	p.Runs = ReadPage(repo, runs)
	return p, nil
}

// Note says where the page lies among all runs, for a person who listed
// with refci runs -n and --page, or, when there are none, how to get
// some: "" when the page holds all of them.
func (p Page) Note() string {
	to := p.From + len(p.Runs)
	switch {
	case p.Total == 0 && p.Target == "":
		return "no runs; start one with 'refci run', or fetch results with: git fetch origin '+refs/ci/*:refs/ci/*'"
	case p.Total == 0:
		short := p.Target[:min(12, len(p.Target))]
		return fmt.Sprintf("no runs of %s; start one with 'refci run', or fetch its runs with: refci fetch %s", short, short)
	case p.Size == 0:
	case to < p.Total:
		return fmt.Sprintf("runs %d-%d of %d, newest first; --page %d for older ones, -n 0 for all", p.From+1, to, p.Total, p.N+1)
	case p.From > 0:
		return fmt.Sprintf("runs %d-%d of %d, newest first (the last page)", p.From+1, to, p.Total)
	}
	return ""
}

// ErrNoLog is matched by the error of OpenLog when the run has no log
// for the job asked for; the error names the jobs it has.
var ErrNoLog = errors.New("no log for job")

// OpenLog opens the log of run r, whose status is st, in repo: the whole
// pipeline's when job is "", else that job's. The caller closes it.
func (r Run) OpenLog(repo *gitproto.Repo, st *queue.Status, job string) (io.ReadCloser, error) {
	path := queue.LogFile
	if job != "" {
		path = ""
		var names []string
		for _, j := range st.Jobs {
			if j.Name == job {
				path = j.Log
			}
			names = append(names, render.Safe(j.Name))
		}
		if path == "" {
			return nil, wrap(fmt.Sprintf("run %s has no log for job %q (jobs: %s)", r.ID, job, strings.Join(names, ", ")), ErrNoLog)
		}
	}
	return repo.OpenFile(r.Commit, path)
}

// Printer shows a person a run followed with Source.Follow, as refci
// trigger --wait and refci log -f do: the pipeline's log as snapshots
// arrive on Log, notes on what the run does on Notes (a terminal's
// stderr), and the final block (render.Terminal and render.Summary) on
// Out. The zero value is not usable: Log, Notes and Out must be set. A
// Printer is not safe for concurrent use. Write errors are not reported.
type Printer struct {
	Log   io.Writer
	Notes io.Writer
	Out   io.Writer
	// EndLog, when set, ends the log on Log (a terminal's styles) before
	// anything else is written to Out or after a takeover; it may be
	// called more than once.
	EndLog func()
	Color  bool   // colour the final block
	Remote string // the remote followed, named when a fetch from it fails

	printed bool // some log of the current attempt was printed
}

func (p *Printer) endLog() {
	if p.EndLog != nil {
		p.EndLog()
	}
}

// note writes one note, its control characters escaped whatever it
// quotes (git's and a remote's messages, names from results), its lines
// kept.
func (p *Printer) note(format string, args ...any) {
	fmt.Fprintln(p.Notes, render.SafeLines("refci: "+fmt.Sprintf(format, args...)))
}

// Print shows ev. It returns true for the Final event, after the final
// block and summary.
func (p *Printer) Print(ev Event) (final bool) {
	safe := render.Safe
	switch ev.Kind {
	case FetchFailed:
		p.note("fetch from %s failed (retrying): %v", safe(p.Remote), ev.Err)
	case Waiting:
		p.note("waiting for the run to start (no worker has pushed its progress yet)")
	case Started:
		st := ev.Status
		after := ""
		if prev := st.PreviousRun(); prev != "" {
			after = fmt.Sprintf(", after run %s lost its worker", safe(prev))
		}
		p.note("run %s (attempt %d) on worker %s%s", safe(st.Run), st.Attempt, safe(st.Worker), after)
	case Progress:
		if ev.Status.IsConfigError() && !p.printed {
			// A configuration error's log is its reason alone, which
			// the summary says.
			break
		}
		if ev.LogCapped {
			fmt.Fprintf(p.Log, "\n[refci: the log was capped; showing its tail]\n")
		}
		p.Log.Write(ev.Log)
		p.printed = p.printed || len(ev.Log) > 0
	case TakenOver:
		p.endLog()
		fmt.Fprintf(p.Notes, "\nrefci: run %s (attempt %d) lost its worker; run %s (attempt %d) on worker %s took the request over\n",
			safe(ev.From), ev.FromAttempt, safe(ev.To), ev.ToAttempt, safe(ev.ToWorker))
		p.printed = false
	case LeaseExpired:
		c := ev.Claim
		fmt.Fprintf(p.Notes, "\nrefci: worker %s stopped renewing its claim on run %s (the lease ran out at %s); waiting for another worker to take the request over\n",
			safe(c.Worker), safe(c.Run), c.LeaseExpires.Local().Format(time.TimeOnly))
	case Final:
		p.endLog()
		// The final block: jobs as a tree, artifacts, then the one-line
		// summary, which holds the reason.
		fmt.Fprintln(p.Out)
		block := *ev.Status
		block.Reason = ""
		render.Terminal(p.Out, &block, render.TermOptions{Color: p.Color, Ref: ev.Ref})
		render.Summary(p.Out, ev.Status, ev.Ref)
		return true
	}
	return false
}

// Follow prints each event of w (Print) until the final one, and
// returns the run's final status; or the error of w.Next, or ctx's
// once it is done.
func (p *Printer) Follow(ctx context.Context, w *Watch) (*queue.Status, error) {
	for {
		ev, err := w.Next(ctx)
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return nil, err
		}
		if p.Print(ev) {
			return ev.Status, nil
		}
	}
}

// PrintClaimNote shows what Source.Locate tells while the request name
// is queued on the Printer's Remote.
func (p *Printer) PrintClaimNote(name string, n ClaimNote, cv ClaimView) {
	switch n {
	case PushedAgain:
		p.note("request %s was pushed again; waiting for a worker to claim it (the claim there, run %s, is of the earlier push)", render.Safe(name), render.Safe(cv.Claim.Run))
	case BadClaim:
		p.note("the claim of %s on %s is not believed (%s); waiting for a worker to replace it", render.Safe(name), render.Safe(p.Remote), render.Safe(cv.Bad.Error()))
	case Queued:
		p.note("request %s is waiting for a worker", render.Safe(name))
	}
}
