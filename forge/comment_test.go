package forge

import (
	"context"
	"strings"
	"testing"
)

// memComments is a pull request's comments in memory, counting writes.
type memComments struct {
	list   []Comment
	next   int64
	writes int
}

func (m *memComments) Holding(_ context.Context, marker string) ([]Comment, error) {
	var out []Comment
	for _, c := range m.list {
		if strings.Contains(c.Body, marker) {
			out = append(out, c)
		}
	}
	return out, nil
}

func (m *memComments) Create(_ context.Context, body string) (int64, error) {
	m.next++
	m.writes++
	m.list = append(m.list, Comment{ID: m.next, Body: body})
	return m.next, nil
}

func (m *memComments) Edit(_ context.Context, id int64, body string) error {
	m.writes++
	for i := range m.list {
		if m.list[i].ID == id {
			m.list[i].Body = body
			return nil
		}
	}
	return ErrNotFound
}

func (m *memComments) Delete(_ context.Context, id int64) error {
	m.writes++
	for i := range m.list {
		if m.list[i].ID == id {
			m.list = append(m.list[:i], m.list[i+1:]...)
			return nil
		}
	}
	return ErrNotFound
}

func TestUpsertOne(t *testing.T) {
	ctx := context.Background()
	const mk = "<!-- m -->"
	m := &memComments{}
	for _, body := range []string{mk + "a", mk + "b"} {
		if err := UpsertOne(ctx, m, mk, body); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.list) != 1 || m.list[0].Body != mk+"b" || m.writes != 2 {
		t.Fatalf("%+v after %d writes; want one comment, created then edited", m.list, m.writes)
	}
	if err := UpsertOne(ctx, m, mk, mk+"b"); err != nil || m.writes != 2 {
		t.Fatalf("an unchanged comment was written (%d writes, %v)", m.writes, err)
	}
	// Copies pasted by hand, and someone else's comment, which stays.
	m.list = append(m.list, Comment{ID: 10, Body: "a remark"}, Comment{ID: 11, Body: mk + "copy"})
	if err := UpsertOne(ctx, m, mk, mk+"c"); err != nil {
		t.Fatal(err)
	}
	if len(m.list) != 2 || m.list[0].Body != mk+"c" || m.list[1].Body != "a remark" {
		t.Fatalf("after copies: %+v; want the oldest, edited, and the remark", m.list)
	}
}
