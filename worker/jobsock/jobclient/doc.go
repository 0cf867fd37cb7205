// Package jobclient is the pipeline's side of a run's job socket
// ($REFCI_SOCKET): `refci job` (RunJobCommand) and `refci secret`
// (RunSecretCommand). It speaks package jobwire's protocol to package
// jobsock's Server.
//
// A pipeline runs it once per job, so its start is on every job's path:
// it imports of the project only jobwire and queue/jobname (not queue),
// so that cmd/refci-job, which holds it and little else, starts in a
// fraction of the time of the refci binary.
package jobclient
