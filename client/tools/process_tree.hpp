/*
 * process_tree.hpp
 *     The command's process tree: starting it (own process group, terminal foreground,
 *     parent-death signal, dispositions), finding every descendant (lockext-run is a
 *     child subreaper, so orphans and setsid'd daemons are re-parented to it and stay
 *     findable through /proc/<pid>/task/<tid>/children), signalling and reaping them.
 *
 * All of it runs on the main thread: PR_SET_PDEATHSIG fires when the thread that forked
 * dies, so the fork must come from the thread that lives until lockext-run exits.
 */
#ifndef LOCKEXT_RUN_PROCESS_TREE_HPP
#define LOCKEXT_RUN_PROCESS_TREE_HPP

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace lockext_run
{

/* Signal dispositions found at start. Signals ignored on entry (nohup, trap '' HUP)
 * stay ignored for the command and are not forwarded. */
struct EntrySignals
{
	std::vector<int> forwarded; // the forwardable signals not ignored on entry
	bool pipe_ignored = false;  // SIGPIPE was ignored on entry: keep it so for the command
};

/* The signals lockext-run forwards to the command unless they were ignored on entry. */
inline constexpr int kForwardable[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* Records the entry dispositions, ignores SIGPIPE, blocks the forwarded signals,
 * SIGCHLD and SIGTTOU (so tcsetpgrp from the background works) and returns a signalfd
 * for the forwarded ones and SIGCHLD (-1 on error). Call before any thread starts. */
int setup_signals(EntrySignals &entry);

/* A signalfd for entry.forwarded and SIGCHLD (blocked by setup_signals). */
int open_signalfd(const EntrySignals &entry);

/* True if pid is stopped (state T in /proc/<pid>/stat). */
bool is_stopped(pid_t pid);

/* Makes lockext-run a child subreaper; false on error (errno set). */
bool become_subreaper();

/* A file descriptor of the controlling terminal if lockext-run is in its foreground
 * process group (interactive use), else -1. */
int foreground_tty();

struct Spawned
{
	pid_t pid = -1;
	int exit_status = 0; // when pid < 0: 71, 126 or 127
};

/* Forks and execs argv with envp in a new process group (its own pid), giving it the
 * terminal's foreground if tty >= 0; the child gets PR_SET_PDEATHSIG(SIGKILL), an empty
 * signal mask, SIGPIPE's entry disposition. Exec failures are reported here. */
Spawned spawn_command(char *const argv[], char *const envp[], const EntrySignals &entry, int tty);

/* Every live (not zombie) descendant of lockext-run, parents before children. */
std::vector<pid_t> descendants();

/* Sends sig to process group pgid and to every descendant (also those that left it). */
void signal_tree(pid_t pgid, int sig);

/* SIGSTOPs the whole tree until no new process appears, then SIGKILLs all of it (so a
 * forking process cannot escape between the walk and the kill). */
void kill_tree(pid_t pgid);

/* Reaps every exited child without blocking; records the status of `command` in
 * command_status and sets command_done (a stop of the command sets command_stopped
 * instead, only reported when track_stops). */
void reap(pid_t command, bool track_stops, bool &command_done, int &command_status,
		  bool &command_stopped);

/* 128+N for a signal, the exit code otherwise. */
int status_of(int wstatus);

} // namespace lockext_run

#endif
