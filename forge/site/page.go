package site

import (
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// ResultPage is the page a worker writes as index.html into each final
// result tree (worker.PageFunc): the run's status, its log and the logs
// of its jobs (by job name), rendered by render.HTML to stand alone, with
// no links to a site around it. target, the tested commit, gives the
// subject and author shown, as untrusted text; nil shows neither. It is
// safe for concurrent use.
func ResultPage(st *queue.Status, log []byte, jobLogs map[string][]byte, target *gitproto.Commit) ([]byte, error) {
	var o render.HTMLOptions
	if target != nil {
		c := render.CommitInfoOf(target.Message, target.Author.Name, target.Author.When)
		o.Commit = &c
	}
	return render.HTML(render.Result{Status: st, Log: log, JobLogs: jobLogs, Ref: queue.RunRef(st.Target, st.Run)}, o)
}
