package forge

import (
	"context"
	"errors"
)

// Comment is a pull request comment as an adapter reads it.
type Comment struct {
	ID   int64
	Body string
}

// Comments is one pull request's comments on one forge, as UpsertOne
// uses them; each adapter implements it with its API.
type Comments interface {
	// Holding returns the comments that hold marker, oldest first (by
	// id), every page read; adapters leave out what is never refci's
	// (GitLab's system notes).
	Holding(ctx context.Context, marker string) ([]Comment, error)
	// Create posts a comment and returns its id.
	Create(ctx context.Context, body string) (int64, error)
	// Edit replaces comment id's body.
	Edit(ctx context.Context, id int64, body string) error
	// Delete deletes comment id; one already gone is no error
	// (ErrNotFound is taken for that).
	Delete(ctx context.Context, id int64) error
}

// UpsertOne makes body the one comment that holds marker: it edits the
// oldest such comment (sending nothing when it already says body), or
// creates one. Copies (two mirrors racing to create it, or pasted by
// hand) are deleted, the oldest kept: after creating, it reads the
// comments again, and the creator of each copy but the oldest deletes
// its own, so that racing callers end with one.
func UpsertOne(ctx context.Context, c Comments, marker, body string) error {
	copies, err := c.Holding(ctx, marker)
	if err != nil {
		return err
	}
	if len(copies) == 0 {
		created, err := c.Create(ctx, body)
		if err != nil {
			return err
		}
		if copies, err = c.Holding(ctx, marker); err != nil {
			return err
		}
		if len(copies) <= 1 || copies[0].ID == created {
			return nil
		}
		// Another caller created one first: keep it, with this body.
		copies = []Comment{{ID: copies[0].ID}, {ID: created}}
	}
	for _, extra := range copies[1:] {
		if err := c.Delete(ctx, extra.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	if copies[0].Body == body {
		return nil
	}
	return c.Edit(ctx, copies[0].ID, body)
}
