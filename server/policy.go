package server

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
)

// rolesPolicy answers the SSH endpoint's questions from the roles file.
type rolesPolicy struct {
	file   *queue.AccessFile
	owners *ownerStore
	log    *slog.Logger
}

func (p *rolesPolicy) access() *queue.Access {
	a, err := p.file.Load()
	if err != nil {
		p.log.Error("roles file", "err", err)
	}
	return a
}

func (p *rolesPolicy) Known(fp string) bool { return p.access().Known(fp) }

func (p *rolesPolicy) AllowRepo(id sshd.Identity, repo string, op sshd.Op) error {
	r := p.access().Roles(id.Fingerprint, repo)
	switch {
	case op == sshd.OpCreate && !r.MayCreate():
		return fmt.Errorf("key %s may not create repositories (roles here: %s); an admin creates %s by pushing to it", id.Fingerprint, r, repo)
	case op == sshd.OpPush && r&^queue.RoleRead == 0:
		return fmt.Errorf("key %s may not push to %s (roles here: %s); pushing needs trigger, worker or admin in the roles file", id.Fingerprint, repo, r)
	case !r.MayRead():
		return fmt.Errorf("key %s has no access to %s; an admin can add it to the roles file", id.Fingerprint, repo)
	}
	return nil
}

func (p *rolesPolicy) AllowRef(push *sshd.Push, u sshd.RefUpdate) error {
	r := p.access().Roles(push.ID.Fingerprint, push.Repo)
	if err := r.MayUpdate(u.Name, u.Deleting()); err != nil {
		return err
	}
	if r&queue.RoleAdmin == 0 && r&queue.RoleWorker != 0 && !(strings.HasPrefix(u.Name, queue.RequestsPrefix) && r&(queue.RoleTrigger|queue.RoleTrusted) != 0) {
		if err := p.owners.checkWorker(push, u, time.Now()); err != nil {
			return err
		}
	}
	if strings.HasPrefix(u.Name, queue.RequestsPrefix) && !u.Deleting() {
		if err := queue.ValidateRequestName(strings.TrimPrefix(u.Name, queue.RequestsPrefix)); err != nil {
			return err
		}
	}
	return nil
}

// checkPushOptions accepts the options refci knows (env=NAME,
// timeout=DURATION), and only on pushes of requests.
func checkPushOptions(_ sshd.Identity, _ string, ups []sshd.RefUpdate, opts []string) error {
	if len(opts) == 0 {
		return nil
	}
	if _, err := requestOptions(opts); err != nil {
		return err
	}
	for _, u := range ups {
		if strings.HasPrefix(u.Name, queue.RequestsPrefix) && !u.Deleting() {
			return nil
		}
	}
	return fmt.Errorf("push options (-o) apply to requests only; push to %sNAME", queue.RequestsPrefix)
}

// requestOptions turns push options into request options.
func requestOptions(opts []string) (queue.RequestOptions, error) {
	var o queue.RequestOptions
	for _, opt := range opts {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "env":
			if queue.ValidateJobName(v) != nil {
				return o, fmt.Errorf("push option env=%q: use letters, digits, '.', '_' or '-'", v)
			}
			o.Env = v
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("push option timeout=%q: write a duration such as timeout=20m", v)
			}
			o.Timeout = d
		default:
			return o, fmt.Errorf("unknown push option %q; refci knows -o env=NAME and -o timeout=DURATION", opt)
		}
	}
	return o, nil
}
