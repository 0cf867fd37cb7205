// Package jobwire is the wire protocol of a run's job socket
// ($REFCI_SOCKET), both sides of it: the messages (Msg), their framing
// (one JSON object per line; Encode, ReadMsgs, ReadReplies) and its
// version (ProtocolVersion). The protocol is described at the top of
// wire.go. Package jobsock serves it; package jobclient speaks it for
// `refci job` and `refci secret`.
//
// The in-shell job channel ($REFCI_JOBS/ctl), its version
// (ShellProtocolVersion) and the shell library that speaks it
// (ShellLibrary, $REFCI_SH) are in shell.go; package jobsock serves it
// too (Server.ServeShell).
//
// It imports nothing of the project, so that the light job client
// (cmd/refci-job), which starts once per job, stays light.
package jobwire
