// Package refci is a CI system that lives in git refs.
//
// A run is asked for by pushing a ref (refs/ci/requests/<name>), or started
// locally with `refci run`. A worker checks the commit out into a private
// directory, runs the repository's own executable .refci/run, and records
// the outcome as an OpenPGP-signed commit at refs/ci/runs/<target>/<run-id>
// whose tree holds status.json, the log, per-job logs and artifacts.
// Everything is visible with git alone; docs/PROTOCOL.md is the contract.
//
// The packages, from the centre outwards:
//
//	queue      the domain: states, status.json, claim.json, the ref layout, the format version
//	gitproto   git and nothing about CI: objects, refs with compare-and-swap, fetch, push,
//	           checkout; the only package that runs git or imports go-git
//	  gitproto/sshd  the embedded SSH git endpoint (receive-pack and upload-pack, limits)
//	  gitproto/sshd/hookclient  the hook client receive-pack's hooks run (cmd/refci-hook)
//	                  and its wire to the server
//	lightbin   finding the binaries beside refci (refci-shim, refci-job, refci-hook, refci-forge)
//	           and checking that one is of this build; lightbin/buildstamp names a build
//	secrets    OpenPGP and nothing about git: identities, signing, verifying, sealing values
//	  secrets/envstore  the secrets environments in refs/ci/secrets/<env>: read, verify, open for a run,
//	                  an admin's change from load to signed commit (refci secrets)
//	results    reading and watching results and claims: list, find, load, verify, locate
//	           and follow a run, watch every run of a remote; every reader of results uses it;
//	           what readers show in a terminal: a page of runs and its lines (ListPage), a
//	           job's log (OpenLog), a followed run's log, notes and end (Printer);
//	           retention (refci gc): the policy, a pass on a repository or a remote and
//	           what it says (Collect, Outcome), deleting with compare-and-swap, and the
//	           periodic passes of refci worker and refci serve (Schedule)
//	requests   asking for runs: making a request (its unique tag), naming and pushing it
//	worker     the loop (claims, leases, takeovers), one run, the outbox, trust, isolation;
//	           the secrets of a run (EnvSecrets), the starter pipeline of refci init, a
//	           run on the user's own machine (RunLocal, refci run);
//	           a worker's remotes as configured and opened, and its retention's caches (Remotes)
//	  worker/workerconf  worker.toml: its schema, the flags merged over it, defaults, the checks
//	                  before start, what pipelines must not read
//	  worker/proc     process supervision: start, wait, kill with grace, reap; the shim choice
//	  worker/jobsock  the job socket's server and the in-shell job channel's, one job record;
//	                  jobsock/jobclient: the refci job/secret clients;
//	                  jobsock/jobwire: the versioned wire protocols and the shell library ($REFCI_SH)
//	  worker/shim     the per-run shim (cmd/refci-shim): hides paths, reaps the pipeline
//	render     pure functions from a result to what people read (terminal, Markdown, HTML)
//	forge      views outward (forges, mail); the mirror: results.WatchRuns to commit
//	           statuses and one pull-request comment, coalesced, recorded, paced;
//	           the intake: open pull requests in as requests pr/<N>
//	  forge/forgeconf  [[forge]] entries: the adapters by kind, checking entries, tokens and
//	                  App keys, building the mirrors and intakes they ask for
//	  forge/link      a worker's refci-forge child: starting, supervising and restarting it,
//	                  and the JSON-lines wire between them (light: refci links it)
//	  forge/forgetest  test-only: an in-memory forge and the contract every adapter passes
//	  forge/site      the static site of results, built by refci view and served by refci serve --http;
//	                  the page a worker puts in each result tree (ResultPage)
//	  forge/github    the GitHub adapter (a token: statuses; a GitHub App: check runs)
//	  forge/gitea     the Gitea and Forgejo adapter: commit statuses, the sticky comment, pull requests
//	  forge/gitlab    the GitLab adapter: commit statuses, the sticky note, merge requests
//	  forge/mail      patch mail: parsing, classifying (RFC 3834), grouping [PATCH vN i/N] series
//	                  by version and thread, base-commit:, git am in a scratch clone; IMAPBox reads
//	                  an IMAP folder (IDLE, read-only, reconnecting), SMTPSender sends; the Bridge:
//	                  series asked for as patches/<id>/v<N>, one threaded reply, exactly once
//	                  through its ledger ref refs/ci/mail/ledger/<name>; Settings: [mail], checked and started
//	server     refci serve: the SSH server's roles, receive rules, owner and trust records;
//	           the embedded worker (serves its repositories, woken by its pushes), the
//	           read-only HTTP server of the static site, retention over its repositories,
//	           and the order of serving and draining (Run)
//	cmd        wiring only: flags, configuration, constructing things, exit codes, printing
//	  cmd/refci        the CLI; it links no forge adapter nor the mail bridge
//	  cmd/refci-forge  refci mirror, refci mail and a worker's [[forge]]/[mail] child
//	                   (refci execs it or supervises it through forge/link)
//	  cmd/refci-shim, cmd/refci-job, cmd/refci-hook  the light binaries beside refci
//	  cmd/internal/cli  the CLI machinery both binaries share: env, the command table and
//	                   its dispatch, exit codes and the error that maps to each, help and
//	                   flags, config files, home and key, terminals and colour, stop signals
//	  cmd/internal/forgecmd  the help of refci-forge's commands, which refci lists
//	fixtures   helpers shared by the tests (git with a private HOME, keys, sample repositories,
//	           result commits, GnuPG); never imported by other code
//	  fixtures/gitea  a real Gitea on 127.0.0.1 (built once by make gitea): repositories, pushes,
//	                  pull requests, forks, restarts
//	  fixtures/dovecot  a real Dovecot IMAP server on 127.0.0.1 (Debian's dovecot-imapd): a throwaway
//	                  configuration and CA, plain, STARTTLS and imaps, Maildir delivery, restarts
//	  fixtures/githubapi, fixtures/gitlabapi  stand-ins for the forges that cannot run here,
//	                  following their published APIs, answering with their published example
//	                  payloads (testdata/)
//
// Arrows point inward; imports_test.go enforces it.
package refci
