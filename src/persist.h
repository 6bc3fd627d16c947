/*-------------------------------------------------------------------------
 *
 * persist.h
 *	  The lease file: live leases saved at a clean shutdown and restored at
 *	  the next start.
 *
 * pg_lockext/leases is written only at a clean shutdown (the postmaster
 * exits with code 0 and pg_control records a shutdown checkpoint): a
 * header (magic, format version, PostgreSQL major, flags, wall-clock and
 * boot-clock save time, the boot id, and a copy of the durable record), one
 * record per live lease with its remaining time, and a trailer with the
 * count and a CRC-32C of everything before it.  Written to a temporary
 * name, fsynced and renamed durably; removed once the next start has made
 * the durable record's copies durable.
 *
 * A restored lease keeps what it had left at shutdown minus the downtime
 * measured on the boot clock, within one boot of the host; after a reboot
 * it keeps everything it had left (a wall clock that stepped forward
 * while the server was down never frees a key early).
 *
 * The file is read as a stream, twice (CRC first, then the leases), so a
 * file of any size or content never keeps the server from starting: an
 * unreadable file means "not every lease restored".  The 1.0 format is read
 * too (its leases keep their full remaining time).
 *
 * Interface:
 *	PersistRestore()		restore the leases, report what the file said (startup)
 *	PersistRemoveLeaseFile()
 *	PersistShutdownWasClean()	pg_control records a completed shutdown
 *	PersistControlTimeline()	the timeline of pg_control's last checkpoint (0 if unreadable)
 *	PersistSave()			write the file (postmaster, clean shutdown)
 *
 * Locking protocol: startup and shutdown run in the postmaster with no
 * other process attached.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_PERSIST_H
#define LOCKEXT_PERSIST_H

#include "durable.h"

#define LOCKEXT_LEASES_FILE LOCKEXT_DIR "/leases"

typedef struct LockextRestoreOutcome
{
	bool		present;		/* a lease file was there */
	bool		readable;		/* header, format and CRC were good */
	bool		saved;			/* written with lockext.save = on */
	bool		complete;		/* every saved lease is live in the table (or expired) */
	bool		has_record;		/* the file carries the durable record */
	LockextDurableRecord record;
	uint64		max_fence_counter;	/* highest fence counter among its leases */
	int64		ttl_ceiling_ms; /* longest TTL among the restored leases */
	uint32		count;
	uint32		restored;
	uint32		expired;
} LockextRestoreOutcome;

extern void PersistRestore(bool restore_leases, LockextRestoreOutcome *outcome);
extern void PersistRemoveLeaseFile(void);
extern bool PersistShutdownWasClean(void);
extern uint32 PersistControlTimeline(void);
extern bool PersistSave(bool save_leases, const LockextDurableRecord *record);

#endif							/* LOCKEXT_PERSIST_H */
