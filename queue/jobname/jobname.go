// Package jobname is the rule for the NAME of `refci job NAME`
// (queue.ValidateJobName). It is a package of its own, importing nothing
// but the standard library, so that the light job client
// (cmd/refci-job) checks names by the same rule as the worker without
// holding package queue and what queue imports.
package jobname

import (
	"fmt"
	"strings"
)

// Validate checks a job name: 1 to 100 letters, digits, '.', '_' or '-',
// starting with a letter or digit, without "..". The name becomes the
// directory jobs/NAME in the result tree.
func Validate(name string) error {
	ok := len(name) >= 1 && len(name) <= 100 && isAlnum(rune(name[0]))
	for _, c := range name {
		ok = ok && (isAlnum(c) || c == '.' || c == '_' || c == '-')
	}
	if !ok || strings.Contains(name, "..") {
		return fmt.Errorf("job name %q is not valid: use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
