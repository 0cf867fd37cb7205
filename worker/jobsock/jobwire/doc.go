// Package jobwire is the wire protocol of a run's job socket
// ($REFCI_SOCKET), both sides of it: the messages (Msg), their framing
// (one JSON object per line; Encode, ReadMsgs, ReadReplies) and its
// version (ProtocolVersion). The protocol is described at the top of
// wire.go. Package jobsock serves it; package jobclient speaks it for
// `refci job` and `refci secret`.
//
// It imports nothing of the project, so that the light job client
// (cmd/refci-job), which starts once per job, stays light.
package jobwire
