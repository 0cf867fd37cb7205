// Package render turns a result (status.json and its logs) into what
// people read: a terminal block, and later Markdown, mail and HTML. Every
// function is pure: the same result gives the same bytes.
package render
