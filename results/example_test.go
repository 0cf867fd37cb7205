package results_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
)

// A view that mirrors results outward (a forge's commit statuses, a mail
// reply) watches every run of a remote and shows each change: it knows
// nothing of the ref layout or of the lost-worker rule.
func ExampleSource_WatchRuns() {
	ctx := context.Background()
	src := results.Source{Dir: "/var/lib/mirror/app.git", Remote: "https://git.example.org/app.git"}
	changes := src.WatchRuns(30 * time.Second)
	for {
		runs, err := changes.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Println("fetch failed, trying again:", err)
			continue
		}
		for _, r := range runs {
			if r.Err != nil {
				fmt.Printf("%s: not believed (%s)\n", r.ID, results.Problem(r.Err))
				continue
			}
			st := r.Shown() // a run whose worker was lost shows as error
			fmt.Printf("%s of %s on request %s: %s\n", r.ID, r.Target, st.Request, st.State)
		}
	}
}

// Following one run, as refci trigger --wait does: its start, each
// snapshot's new log, a takeover, its end.
func ExampleSource_Follow() {
	ctx := context.Background()
	src := results.Source{Dir: ".", Remote: "origin"}
	w := src.Follow(ctx, "4b825dc642cb6eb9a060e54bf8d69288fbee4904", results.LatestRun(time.Now()))
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		switch ev.Kind {
		case results.Progress:
			fmt.Print(string(ev.Log))
		case results.TakenOver:
			fmt.Printf("run %s lost its worker; following run %s\n", ev.From, ev.To)
		case results.Final:
			fmt.Println(ev.Status.State)
			return
		}
	}
}

// One pass of refci gc on a remote, through a cache of gc's own: read,
// decide, delete with compare-and-swap, and say what was done.
func ExampleCollect() {
	ctx := context.Background()
	remote, err := gitproto.OpenRemote("https://git.example.org/app.git", "/var/cache/refci/app-gc.git", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	target := results.RemoteTarget(remote)
	out, err := results.Collect(ctx, target, results.DefaultRetention, false)
	if out == nil {
		fmt.Println("nothing decided:", err)
		return
	}
	out.Print(os.Stdout, false) // refci: removed 4 runs (pr/1 3, main 1); kept 8: ...
	for _, r := range out.Removed.Refused {
		// Why is the remote's text: escaped before a terminal sees it.
		fmt.Printf("%s refused to delete %s: %s%s\n", target.Name(), r.Ref, render.Safe(r.Why), r.Advice())
	}
}

// Retention on a schedule, as refci worker's [retention] does: a pass at
// once, then one every six hours, until ctx ends.
func ExampleSchedule() {
	ctx := context.Background()
	repo, err := gitproto.Open("/srv/git/app.git")
	if err != nil {
		fmt.Println(err)
		return
	}
	s := results.Schedule{
		Policy: results.Retention{KeepLast: 20, KeepDays: 30},
		Every:  6 * time.Hour,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Targets: func(context.Context) ([]*results.Target, error) {
			return []*results.Target{results.LocalTarget(repo, "app.git")}, nil
		},
	}
	s.Run(ctx)
}
