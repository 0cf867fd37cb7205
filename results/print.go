package results

import (
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

func (p *Printer) note(format string, args ...any) {
	fmt.Fprintf(p.Notes, "refci: "+format+"\n", args...)
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
