package worker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// PageFunc renders the static page of a finished run from its status
// and logs (jobLogs by job name); target is the commit the run tested
// (nil when the repository has no such commit), whose subject and author
// the page shows as untrusted text. cmd/refci passes site.ResultPage;
// worker does not import render or forge (imports_test.go).
type PageFunc func(st *queue.Status, log []byte, jobLogs map[string][]byte, target *gitproto.Commit) ([]byte, error)

// A repository's own viewer: .refci/viewer/ of the tested commit.
const (
	ViewerDir = ".refci/viewer"
	// DefaultPageWithViewer is where the default page goes when the
	// viewer brings its own index.html.
	DefaultPageWithViewer = "refci.html"

	viewerFileCap  = 5 << 20
	viewerTotalCap = 20 << 20
	viewerMaxFiles = 500
)

// pageFiles adds the run's page, and the repository's viewer if the
// target has one, to the files of a final result. A page that cannot be
// rendered is noted in status.json (extra.page_error); the result is
// recorded without it.
func (r *run) pageFiles(files []resultFile) []resultFile {
	if r.spec.Page == nil {
		return files
	}
	viewer, verr := r.viewerFiles()
	var log []byte
	jobLogs := map[string][]byte{}
	for _, f := range files {
		job, isJob := strings.CutPrefix(f.path, queue.JobsDir+"/")
		if f.path != queue.LogFile && !(isJob && strings.HasSuffix(job, "/log.txt")) {
			continue
		}
		b := f.data
		if f.src != "" {
			var err error
			if b, err = os.ReadFile(f.src); err != nil {
				continue
			}
		}
		if f.path == queue.LogFile {
			log = b
		} else {
			jobLogs[strings.TrimSuffix(job, "/log.txt")] = b
		}
	}
	note := func(msg string) {
		if r.st.Extra == nil {
			r.st.Extra = map[string]any{}
		}
		r.st.Extra["page_error"] = msg
	}
	if verr != nil {
		note(fmt.Sprintf("%s not copied: %v", ViewerDir, verr))
		viewer = nil
	}
	name := queue.IndexFile
	for _, v := range viewer {
		if v.path == queue.IndexFile {
			name = DefaultPageWithViewer
		}
	}
	target, err := r.spec.Repo.Commit(r.spec.Target)
	if err != nil {
		target = nil // not a commit: the run ended in error already
	}
	page, err := r.spec.Page(r.st, log, jobLogs, target)
	if err != nil {
		note(err.Error())
	} else {
		files = append(files, resultFile{path: name, data: page})
	}
	return append(files, viewer...)
}

// reserved are the names of the result tree a viewer may not replace.
var reserved = map[string]bool{queue.StatusFile: true, queue.LogFile: true, queue.JobsDir: true,
	queue.ArtifactsDir: true, DefaultPageWithViewer: true}

// viewerFiles reads the regular files under .refci/viewer/ of the target
// commit from the object database (not from the checkout, which the
// pipeline may have changed). Symlinks, submodules and names git would
// take for .git are left out; files over 5 MiB, more than 20 MiB or 500
// files in all are refused as a whole.
func (r *run) viewerFiles() ([]resultFile, error) {
	c, err := r.spec.Repo.Commit(r.spec.Target)
	if err != nil {
		return nil, nil // not a commit: the run ended in error already
	}
	tree, err := r.spec.Repo.Tree(c)
	if err != nil {
		return nil, err
	}
	var out []resultFile
	total := int64(0)
	err = tree.Files(ViewerDir, func(f *gitproto.File) error {
		if !f.Regular {
			return nil
		}
		top, _, _ := strings.Cut(f.Name, "/")
		if reserved[top] || hasDotGit(f.Name) || strings.Contains(f.Name, "..") {
			return nil
		}
		if f.Size > viewerFileCap {
			return fmt.Errorf("%s is %d bytes, over the cap of %d per file", f.Name, f.Size, viewerFileCap)
		}
		if total += f.Size; total > viewerTotalCap || len(out) >= viewerMaxFiles {
			return fmt.Errorf("over the cap of %d bytes or %d files", viewerTotalCap, viewerMaxFiles)
		}
		rd, err := f.Open()
		if err != nil {
			return err
		}
		defer rd.Close()
		b, err := io.ReadAll(io.LimitReader(rd, viewerFileCap+1))
		if err != nil {
			return err
		}
		out = append(out, resultFile{path: f.Name, data: b})
		return nil
	})
	if errors.Is(err, gitproto.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}
