//go:build linux

package jobclient

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// dial connects to the Unix socket at path. It does without package net,
// which would link the C library into cmd/refci-job and cost every job
// its dynamic loading. The connection is an *os.File in non-blocking mode:
// its reads and writes go through the runtime's poller, so Close ends a
// read blocked in another goroutine, and SetDeadline works.
//
// A connect finds the listener's queue full (EAGAIN) when many jobs start
// at once; it is retried, with a growing pause, until deadline or ctx
// ends. The error is then os.ErrDeadlineExceeded or ctx's.
func dial(ctx context.Context, path string, deadline time.Time) (*os.File, error) {
	fd, err := dialFD(ctx, path, deadline)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "unix:"+path), nil
}

// dialFD is dial's connection as a non-blocking file descriptor
// (close-on-exec), outside the runtime's poller.
func dialFD(ctx context.Context, path string, deadline time.Time) (int, error) {
	sa := &syscall.SockaddrUnix{Name: path}
	pause := 100 * time.Microsecond
	for {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			return -1, os.NewSyscallError("socket", err)
		}
		err = syscall.Connect(fd, sa)
		if err == nil {
			return fd, nil
		}
		syscall.Close(fd)
		if !errors.Is(err, syscall.EAGAIN) {
			return -1, os.NewSyscallError("connect", err)
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return -1, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(min(pause, wait))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return -1, ctx.Err()
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}
