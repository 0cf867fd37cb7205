package cli

import "errors"

// ErrUsage is what errors.Is finds in an error that AsUsage marked as the
// user's to fix. Its text never shows: the marked error says what is
// wrong and what to do.
var ErrUsage = errors.New("usage error")

// usageError is an error AsUsage marked.
type usageError struct{ err error }

func (u usageError) Error() string        { return u.err.Error() }
func (u usageError) Unwrap() error        { return u.err }
func (u usageError) Is(target error) bool { return target == ErrUsage }

// AsUsage marks err as the user's to fix: errors.Is finds ErrUsage in it,
// its text is err's, and it unwraps to err. AsUsage(nil) is nil.
func AsUsage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// ExitFor is the exit code of a command that failed with err, which is
// not nil: ExitUsage when the user is to fix it (it holds ErrUsage, or
// one of usage, as errors.Is finds them), else ExitInfra.
func ExitFor(err error, usage ...error) int {
	if errors.Is(err, ErrUsage) {
		return ExitUsage
	}
	for _, u := range usage {
		if errors.Is(err, u) {
			return ExitUsage
		}
	}
	return ExitInfra
}
