/*-------------------------------------------------------------------------
 *
 * durable.h
 *	  The durable record: the few high-water marks that must survive any
 *	  restart, kept in two copies in the data directory.
 *
 * The record holds
 *	- fence_reserved: no fence counter above it was ever handed out (fence.h
 *	  raises it, in blocks, before handing counters out);
 *	- ttl_ceiling_ms: no grant or renewal of this run asked for a longer TTL
 *	  (raised before a grant or renewal that exceeds it), so the grace after
 *	  a crash covers the longest lease an earlier holder may still hold even
 *	  if lockext.max_ttl_ms was lowered since;
 *	- the grace period in force (grace.h): reason, length and deadline on the
 *	  boot clock, with the boot id of the host it was measured on.
 *
 * Copies, each written to a temporary name, fsynced and renamed durably:
 *	pg_lockext/state	the record
 *	pg_lockext/running	the same record; present while the server runs
 *						(removed at a clean shutdown, after the lease file,
 *						which carries a third copy, is durable)
 * Every change writes both copies before anyone relies on it (a counter is
 * handed out only after both hold its reservation), so either copy alone
 * bounds everything handed out: losing one file loses nothing.  The 1.0
 * fence file, pg_lockext/fence, is read as one more copy (fence only).
 *
 * Interface:
 *	DurableShmemSize(), DurableShmemInit()
 *	DurableLoad()			read and merge the copies (startup, postmaster)
 *	DurableMerge()			combine two records: the maximum of every mark
 *	DurableRecordValid()	magic, version and CRC check of a copy
 *	DurableBeginRun()		adopt a record and write both copies (startup)
 *	DurableEndRunClean()	remove the marker (clean shutdown)
 *	DurableCurrent()		the record in force (for the lease file)
 *	DurableRaiseFence(), DurableRaiseTtlCeiling(), DurableSetGrace()
 *	DurableSetReplicationMode()	the mode published last (replication.h: a
 *							start with replication off tells the standbys)
 *	DurableFailedPath()		the copy this process last failed to write
 *
 * Locking protocol: the record in shared memory is protected by
 * LockextLock(LOCKEXT_LOCK_DURABLE), held EXCLUSIVE across each write of
 * both copies.  It may be taken while holding one partition lock (the fence
 * reservation is extended inside a grant), never the other way round.
 * ttl_ceiling is mirrored in a pg_atomic so that the grant path can tell
 * without a lock whether a write is needed.  Nothing here ereports above
 * LOG: failures come back as false with errno set.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_DURABLE_H
#define LOCKEXT_DURABLE_H

#include "port/pg_crc32c.h"

#include "clock.h"

#define LOCKEXT_DIR "pg_lockext"
#define LOCKEXT_STATE_FILE LOCKEXT_DIR "/state"
#define LOCKEXT_MARKER_FILE LOCKEXT_DIR "/running"
#define LOCKEXT_LEGACY_FENCE_FILE LOCKEXT_DIR "/fence"

typedef struct LockextDurableRecord
{
	uint32		magic;
	uint32		version;
	uint64		fence_reserved;
	int64		ttl_ceiling_ms;
	int32		grace_reason;	/* LockextGraceReason; 0 = none */
	uint32		flags;			/* LOCKEXT_DURABLE_* below */
	uint32		standby_timeline;	/* with PROMOTION_OWED: timeline the standby started on */
	uint32		replication_mode;	/* the last lockext.replication the worker published */
	int64		grace_length_ms;
	int64		grace_until_boot_ns;
	char		boot_id[LOCKEXT_BOOT_ID_LEN];	/* the host boot of the writer */
	pg_crc32c	crc;			/* of everything above */
} LockextDurableRecord;

/*
 * fence_reserved is a value some copy held, not a proven bound: the server
 * started without a readable copy and no operator has named a floor yet.
 */
#define LOCKEXT_DURABLE_FENCE_UNPROVEN 0x1
/*
 * The server ran in recovery and has not armed its promotion grace yet: a
 * start that is no longer in recovery owes one (a clean restart right after
 * a promotion, or a standby started without standby.signal).
 */
#define LOCKEXT_DURABLE_PROMOTION_OWED 0x2

typedef struct LockextDurableLoad
{
	bool		valid;			/* at least one copy was readable */
	LockextDurableRecord record;	/* merged from the readable copies */
	bool		marker_present; /* pg_lockext/running exists, readable or not */
	int			copies_valid;
	int			copies_damaged; /* present but unreadable */
	const char *damaged[3];		/* which ones */
} LockextDurableLoad;

extern Size DurableShmemSize(void);
extern void DurableShmemInit(void);

extern void DurableLoad(LockextDurableLoad *load);
extern void DurableMerge(LockextDurableRecord *into, const LockextDurableRecord *from);
extern bool DurableRecordValid(const LockextDurableRecord *record);
extern void DurableSeal(LockextDurableRecord *record);
extern bool DurableBeginRun(const LockextDurableRecord *record);
extern void DurableEndRunClean(const LockextDurableRecord *final_record);
extern void DurableCurrent(LockextDurableRecord *out);

extern const char *DurableFailedPath(void);

extern bool DurableRaiseFence(uint64 reserved);
extern bool DurableRaiseTtlCeiling(int64 ttl_ms);
extern bool DurableSetGrace(int reason, int64 length_ms, int64 until_boot_ns);
extern bool DurableSetReplicationMode(int mode);

#endif							/* LOCKEXT_DURABLE_H */
