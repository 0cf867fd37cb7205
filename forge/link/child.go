package link

import (
	"errors"
	"fmt"
	"io"
)

// Parent is the child's side of the link: the worker that started it.
// Its methods but Listen are safe for concurrent use.
type Parent struct {
	Start Start // what the worker sent first
	dec   *Decoder
	enc   *Encoder
}

// Accept reads the worker's start message from in (the child's standard
// input); out is where the child answers (its standard output).
func Accept(in io.Reader, out io.Writer) (*Parent, error) {
	dec := NewDecoder(in)
	m, err := dec.Next()
	if err == io.EOF {
		return nil, fmt.Errorf("link: no start message: refci-forge link is started by refci worker, not by hand")
	}
	if err != nil {
		return nil, err
	}
	if m.Start == nil {
		return nil, fmt.Errorf("link: the first message is not the start message")
	}
	if m.Start.Version != Version {
		return nil, fmt.Errorf("link: version %d of the wire, this refci-forge speaks %d: install refci and refci-forge of one build (make build)", m.Start.Version, Version)
	}
	return &Parent{Start: *m.Start, dec: dec, enc: NewEncoder(out)}, nil
}

// Ready tells the worker that the adapters run.
func (p *Parent) Ready(r Ready) error { return p.enc.Send(Message{Ready: &r}) }

// Fail tells the worker why the child stops before it is ready: exit is
// the status the worker should end with (2 configuration, 3 other), msg
// one line to print.
func (p *Parent) Fail(exit int, msg string) error {
	return p.enc.Send(Message{Fail: &Fail{Exit: exit, Error: msg}})
}

// Asked tells the worker that a request was pushed to the remote url (as
// configured).
func (p *Parent) Asked(url string) { p.enc.Send(Message{Asked: url}) }

// Listen calls pushed with the remote of each wake-up the worker sends,
// until the worker closes the input (nil: the child should stop) or
// reading fails. A line that is not a message is skipped.
func (p *Parent) Listen(pushed func(url string)) error {
	for {
		m, err := p.dec.Next()
		var bad *LineError
		switch {
		case err == io.EOF:
			return nil
		case errors.As(err, &bad):
			continue
		case err != nil:
			return err
		case m.Pushed != "":
			pushed(m.Pushed)
		}
	}
}
