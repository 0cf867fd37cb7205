package mail

import (
	"bytes"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// thread is what a reply needs of the series it answers; the bridge
// keeps it in its ledger, so a restarted bridge replies without the mail.
type thread struct {
	Series     string   `json:"series"`  // <id>/v<N>
	Version    int      `json:"version"` // N
	Total      int      `json:"total"`   // the patch count
	Title      string   `json:"title"`   // the cover letter's title, or the first patch's
	Subject    string   `json:"subject"` // the root's subject as sent
	Root       string   `json:"root"`    // the root's Message-ID (cover letter, or first patch)
	References []string `json:"references,omitempty"`
	Author     string   `json:"author"` // the root's sender's address
	AuthorName string   `json:"author_name,omitempty"`
	Cc         []string `json:"cc,omitempty"`        // the root's other To and Cc addresses, ours left out
	Base       string   `json:"base,omitempty"`      // the commit the series was applied on (or named)
	BaseFrom   string   `json:"base_from,omitempty"` // where Base came from, for people
}

// The values of X-Refci-State.
const (
	StateNotApplied = "not-applied" // the series did not apply, or has no base the bridge can find, or holds no patch
	StateIncomplete = "incomplete"  // patches were missing when the series timed out
)

// outcome is what a reply reports.
type outcome struct {
	state string // a queue.State's text, StateNotApplied or StateIncomplete
	// A run's result:
	result  *render.Result
	request string
	head    string
	runURL  string
	// not-applied:
	applyErr *ApplyError
	problem  string // why, when not an ApplyError
	// incomplete:
	missing []int
	timeout time.Duration
}

// replyOptions are the bridge's settings a reply uses.
type replyOptions struct {
	from     *mail.Address
	fetchURL string // what readers fetch from
	noCc     bool
	now      time.Time
	signer   Signer // nil: unsigned
}

// maxReply caps a reply's body; quoted logs are capped well below it.
const maxReply = 128 << 10

// replyID is the reply's Message-ID: the same for the same series and
// run (or outcome), so a retried send is the same mail.
func replyID(th thread, o outcome, domain string) string {
	token := o.state
	if o.result != nil && queue.ValidRunID(o.result.Status.Run) {
		token = "run-" + o.result.Status.Run
	}
	return "refci." + strings.ReplaceAll(th.Series, "/", ".") + "." + token + "@" + domain
}

// domainOf is the domain of an address, or "localhost" when it has
// none usable in a Message-ID.
func domainOf(addr string) string {
	_, d, ok := strings.Cut(addr, "@")
	if !ok || d == "" || len(d) > 200 {
		return "localhost"
	}
	for _, c := range d {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return "localhost"
		}
	}
	return strings.ToLower(d)
}

// compose builds the reply: its Message-ID, envelope recipients and the
// whole message.
func compose(o replyOptions, th thread, out outcome) (id string, rcpt []string, raw []byte, err error) {
	id = replyID(th, out, domainOf(o.from.Address))
	var h gomail.Header
	subject := th.Subject
	if !ParseSubject(subject).Re {
		subject = "Re: " + subject
	}
	to := []*gomail.Address{{Name: th.AuthorName, Address: th.Author}}
	rcpt = []string{th.Author}
	var cc []*gomail.Address
	if !o.noCc {
		for _, a := range th.Cc {
			if !strings.EqualFold(a, th.Author) {
				cc = append(cc, &gomail.Address{Address: a})
				rcpt = append(rcpt, a)
			}
		}
	}
	refs := append(append([]string{}, th.References...), th.Root)
	if len(refs) > 20 { // the root and the newest of its chain
		refs = append(refs[:1:1], refs[len(refs)-19:]...)
	}
	// go-message writes fields in the reverse order of their setting.
	h.Set("Content-Transfer-Encoding", "quoted-printable")
	h.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	h.Set("MIME-Version", "1.0")
	if out.result != nil {
		h.Set("X-Refci-Run", out.result.Ref)
	}
	h.Set("X-Refci-State", out.state)
	h.Set("Auto-Submitted", "auto-replied")
	h.SetMsgIDList("References", refs)
	h.SetMsgIDList("In-Reply-To", []string{th.Root})
	h.SetMessageID(id)
	h.SetSubject(subject)
	h.SetDate(o.now)
	if len(cc) > 0 {
		h.SetAddressList("Cc", cc)
	}
	h.SetAddressList("To", to)
	h.SetAddressList("From", []*gomail.Address{{Name: o.from.Name, Address: o.from.Address}})

	body := replyBody(o, th, out)
	if len(body) > maxReply {
		body = body[:maxReply] + "\n[... cut]\n"
	}
	if o.signer != nil {
		raw, err := signedMessage(h.Header.Header, body, o.signer)
		if err != nil {
			return "", nil, nil, err
		}
		return id, rcpt, raw, nil
	}
	var b bytes.Buffer
	w, err := gomail.CreateSingleInlineWriter(&b, h)
	if err != nil {
		return "", nil, nil, err
	}
	if _, err := w.Write([]byte(strings.ReplaceAll(body, "\n", "\r\n"))); err != nil {
		return "", nil, nil, err
	}
	if err := w.Close(); err != nil {
		return "", nil, nil, err
	}
	return id, rcpt, b.Bytes(), nil
}

// replyBody is the plain text of a reply: what ran on which base and how
// it ended first, then the details, then how to look again.
func replyBody(o replyOptions, th thread, out outcome) string {
	var b strings.Builder
	what := fmt.Sprintf("%q (v%d, %s)", render.Safe(th.Title), th.Version, plural(th.Total, "patch", "patches"))
	base := "no base"
	if th.Base != "" {
		base = "base " + shortHash12(th.Base)
		if th.BaseFrom != "" {
			base += " (" + render.Safe(th.BaseFrom) + ")"
		}
	}
	switch out.state {
	case StateIncomplete:
		var missing []string
		for i, n := range out.missing {
			if i == 10 && len(out.missing) > 11 {
				missing = append(missing, fmt.Sprintf("and %d more", len(out.missing)-10))
				break
			}
			missing = append(missing, strconv.Itoa(n))
		}
		fmt.Fprintf(&b, "refci did not test %s: after waiting %s, patch %s of %d had not arrived.\n\n",
			what, strings.TrimSuffix(out.timeout.String(), "0s"), strings.Join(missing, ", "), th.Total)
		b.WriteString("Please send the whole series again, as a new version, for example:\n\n")
		fmt.Fprintf(&b, "    git format-patch -v%d --cover-letter --thread --base=<base> <base>..<branch>\n", th.Version+1)
		b.WriteString("    git send-email --to=" + o.from.Address + " v" + strconv.Itoa(th.Version+1) + "-*.patch\n")
	case StateNotApplied:
		if ae := out.applyErr; ae != nil {
			where := "The series"
			if ae.Patch > 0 {
				where = fmt.Sprintf("Patch %d of %d (%q)", ae.Patch, th.Total, render.Safe(ae.Subject))
			}
			fmt.Fprintf(&b, "refci did not test %s: %s does not apply on %s.\n\n", what, where, base)
			if strings.TrimSpace(ae.Output) != "" {
				b.WriteString("git am --3way said:\n\n")
				for _, l := range strings.Split(strings.TrimRight(ae.Output, "\n"), "\n") {
					if l = strings.TrimRight(render.PlainLine([]byte(l)), " \t"); l != "" {
						b.WriteString("    " + l)
					}
					b.WriteString("\n")
				}
				b.WriteString("\n")
			}
		} else {
			fmt.Fprintf(&b, "refci did not test %s: %s\n\n", what, render.Safe(out.problem))
		}
		b.WriteString("Rebase the series on a commit the repository has and send it again, naming\n" +
			"that commit, so that refci applies it where you wrote it:\n\n")
		fmt.Fprintf(&b, "    git fetch %s\n", shellWord(o.fetchURL))
		fmt.Fprintf(&b, "    git rebase FETCH_HEAD\n")
		fmt.Fprintf(&b, "    git format-patch -v%d --cover-letter --thread --base=FETCH_HEAD FETCH_HEAD..\n", th.Version+1)
		b.WriteString("    git send-email --to=" + o.from.Address + " v" + strconv.Itoa(th.Version+1) + "-*.patch\n")
	default:
		st := out.result.Status
		verdict := map[string]string{
			string(queue.Success):   "it passed",
			string(queue.Failure):   "it FAILED",
			string(queue.Error):     "it could not run (error)",
			string(queue.Cancelled): "it was cancelled",
		}[out.state]
		if verdict == "" {
			verdict = "it ended in state " + render.Safe(out.state)
		}
		fmt.Fprintf(&b, "refci ran %s\nas the request %s on %s: %s", what, render.Safe(out.request), base, verdict)
		if st.State == queue.Success {
			fmt.Fprintf(&b, " in %s.\n", render.Duration(st.DurationMS))
		} else if r := failedJobs(st); r != "" {
			fmt.Fprintf(&b, ": %s.\n", r)
		} else if st.Reason != "" {
			fmt.Fprintf(&b, ": %s.\n", strings.TrimSuffix(strings.Join(strings.Fields(render.Safe(st.Reason)), " "), "."))
		} else {
			b.WriteString(".\n")
		}
		if !st.Trusted {
			b.WriteString("Mailed patches run untrusted, without secrets.\n")
		}
		b.WriteString("\n")
		var term bytes.Buffer
		render.Terminal(&term, st, render.TermOptions{Ref: out.result.Ref})
		b.WriteString(term.String())
		b.WriteString(render.TextExcerpts(*out.result))
		url := shellWord(o.fetchURL)
		series := queue.MailSeriesRef(out.request)
		b.WriteString("\nFetch the result (a signed commit) and the tested commits:\n\n")
		fmt.Fprintf(&b, "    git fetch %s %s %s\n", url, out.result.Ref, series)
		if queue.ValidRunID(st.Run) {
			fmt.Fprintf(&b, "    refci log %s\n", st.Run)
		}
		b.WriteString("\nReproduce it in your clone:\n\n")
		fmt.Fprintf(&b, "    git fetch %s %s\n", url, series)
		fmt.Fprintf(&b, "    git checkout --detach %s\n", out.head)
		b.WriteString("    .refci/run\n")
		fmt.Fprintf(&b, "\nor run it as refci does: refci run %s\n", out.head)
		if out.runURL != "" {
			fmt.Fprintf(&b, "\nThe run's page: %s\n", out.runURL)
		}
	}
	b.WriteString("\n-- \nrefci mail bridge; this reply was sent automatically.\n")
	return b.String()
}

func failedJobs(st *queue.Status) string {
	var names []string
	for _, j := range st.Jobs {
		if j.State == queue.Failure {
			names = append(names, render.Safe(j.Name))
		}
	}
	switch len(names) {
	case 0:
		return ""
	case 1:
		return "job " + names[0] + " failed"
	}
	return "jobs " + strings.Join(names, ", ") + " failed"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func shortHash12(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// shellWord quotes s for a POSIX shell when it needs it.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
