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

/* The job-control stop signals lockext-run catches (their default action would stop
 * lockext-run and with it the renewals, while the command, in its own process group,
 * keeps running): they are relayed, the command's tree is stopped before lockext-run. */
inline constexpr int kStopSignals[] = {SIGTSTP, SIGTTIN, SIGTTOU};

inline bool
is_stop_signal(int sig)
{
	return sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/* Records the entry dispositions, ignores SIGPIPE, blocks the forwarded signals,
 * SIGCHLD, the stop signals (SIGTTOU also so that tcsetpgrp from the background works)
 * and SIGCONT, and returns a signalfd for the forwarded ones, the stop signals and SIGCHLD
 * (-1 on error). Call before any thread starts. */
int setup_signals(EntrySignals &entry);

/* A signalfd for entry.forwarded, the stop signals, SIGCHLD and, with with_cont, SIGCONT
 * (all blocked by setup_signals). */
int open_signalfd(const EntrySignals &entry, bool with_cont);

/* True if pid is stopped (state T in /proc/<pid>/stat). */
bool is_stopped(pid_t pid);

/* The state letter of pid in /proc/<pid>/stat ('T' stopped, 't' traced, 'Z' zombie...),
 * '\0' if it is gone. */
char proc_state(pid_t pid);

/* The pid tracing pid (TracerPid in /proc/<pid>/status), 0 if none. */
pid_t tracer_of(pid_t pid);

/* Makes lockext-run a child subreaper; false on error (errno set). */
bool become_subreaper();

/* A file descriptor of the controlling terminal if process group pgrp (lockext-run's
 * job: the front's group) is its foreground process group (interactive use), else -1. */
int foreground_tty(pid_t pgrp);

struct Spawned
{
	pid_t pid = -1;
	int exit_status = 0; // when pid < 0: 71, 126 or 127
};

/* Forks and execs argv with envp in a new process group (its own pid), giving it the
 * terminal's foreground if tty >= 0; the child gets PR_SET_PDEATHSIG(SIGKILL), an empty
 * signal mask, SIGPIPE's entry disposition. Exec failures are reported here. */
Spawned spawn_command(char *const argv[], char *const envp[], const EntrySignals &entry, int tty,
					  pid_t job_pgrp);

/* Every live (not zombie) descendant of lockext-run, parents before children. */
std::vector<pid_t> descendants();

/* Sends sig to process group pgid (unless pgid is 0) and to every descendant (also those
 * that left it).
 *
 * Pass the command's pgid only while the command has not been reaped: until then its
 * pid (= the group's id) stays allocated, so the group cannot be an unrelated one. Once
 * it is reaped and the group's last member ends, the id can be reused by any process,
 * so from then on pass 0: the descendant walk is exact (lockext-run is a subreaper, every
 * process the command started is its descendant). Not tested: recycling a given pgid
 * would need the pid space to wrap around under the test. */
void signal_tree(pid_t pgid, int sig);

/* SIGSTOPs the whole tree until no new process appears, then SIGKILLs all of it (so a
 * forking process cannot escape between the walk and the kill). pgid as for
 * signal_tree. */
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
