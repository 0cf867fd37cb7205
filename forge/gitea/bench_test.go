package gitea_test

import (
	"fmt"
	"testing"

	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// BenchmarkSetStatusOnRealGitea: one status sent to a real Gitea on
// 127.0.0.1 (go test -run '^$' -bench . ./forge/gitea).
func BenchmarkSetStatusOnRealGitea(b *testing.B) {
	srv := giteafix.Shared(b)
	repo := srv.NewRepo(b)
	commit := repo.Push(b, "main", "first")
	f, err := newForgeTB(repo)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	for i := 0; b.Loop(); i++ {
		st := forge.Status{Context: "refci/bench", State: queue.Running, Description: fmt.Sprintf("step %d", i)}
		if err := f.SetStatus(ctx, commit, st); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpsertCommentOnRealGitea: one edit of the sticky comment (a
// list and an edit) on a real Gitea.
func BenchmarkUpsertCommentOnRealGitea(b *testing.B) {
	srv := giteafix.Shared(b)
	repo := srv.NewRepo(b)
	repo.Push(b, "main", "first")
	repo.Push(b, "feature", "a change")
	pr := repo.OpenPullRequest(b, "feature", "main", "a change")
	f, err := newForgeTB(repo)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	const marker = "<!-- refci:bench -->"
	for i := 0; b.Loop(); i++ {
		if err := f.UpsertComment(ctx, pr, marker, fmt.Sprintf("%s\nchange %d", marker, i)); err != nil {
			b.Fatal(err)
		}
	}
}
