/*-------------------------------------------------------------------------
 *
 * wait_queue.cpp
 *	  Backends waiting for a key (see wait_queue.h for the interface and the
 *	  locking protocol).
 *
 * Sizing: MaxBackends slots of offsetof(key) + lockext.max_key_length
 * bytes, in the pattern of InitProcGlobal: one per backend that could ever
 * wait, allocated once at start.  "C written in C++", like lock_table.cpp.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "gucs.h"
#include "lock_table.h"
#include "shmem.h"
#include "wait_queue.h"
}

typedef struct WaitPartition
{
	dlist_head	waiters;		/* QUEUED slots, oldest first */
	pg_atomic_uint32 count;		/* their number, read without the lock */
} WaitPartition;

typedef struct WaitQueueShared
{
	pg_atomic_uint32 waiting_now;	/* admitted waiters (lockext.max_waiters) */
	pg_atomic_uint64 waits;		/* waits begun */
	pg_atomic_uint64 wait_timeouts;	/* waits that ended by their bound */
	int			nslots;
	Size		slot_stride;
	WaitPartition partitions[LOCKEXT_NUM_PARTITIONS];
} WaitQueueShared;

static WaitQueueShared *queue_state = NULL;
static char *slots = NULL;

static Size
SlotStride(void)
{
	return MAXALIGN(offsetof(LockextWaitSlot, key) + lockext_max_key_length);
}

static LockextWaitSlot *
SlotAt(int i)
{
	return (LockextWaitSlot *) (slots + queue_state->slot_stride * (Size) i);
}

Size
WaitQueueShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(WaitQueueShared)), mul_size(SlotStride(), (Size) MaxBackends));
}

void
WaitQueueShmemInit(void)
{
	bool		found;

	queue_state = (WaitQueueShared *) ShmemInitStruct("lockext wait queue",
													  MAXALIGN(sizeof(WaitQueueShared)) +
														  mul_size(SlotStride(), (Size) MaxBackends),
													  &found);
	slots = (char *) queue_state + MAXALIGN(sizeof(WaitQueueShared));
	if (found)
		return;
	pg_atomic_init_u32(&queue_state->waiting_now, 0);
	pg_atomic_init_u64(&queue_state->waits, 0);
	pg_atomic_init_u64(&queue_state->wait_timeouts, 0);
	queue_state->nslots = MaxBackends;
	queue_state->slot_stride = SlotStride();
	for (int p = 0; p < LOCKEXT_NUM_PARTITIONS; p++)
	{
		dlist_init(&queue_state->partitions[p].waiters);
		pg_atomic_init_u32(&queue_state->partitions[p].count, 0);
	}
	for (int i = 0; i < MaxBackends; i++)
	{
		LockextWaitSlot *slot = SlotAt(i);

		memset(slot, 0, offsetof(LockextWaitSlot, key));
		slot->state = LOCKEXT_WAIT_IDLE;
	}
}

/* This backend's slot, or NULL for a process that has none (no PGPROC of a backend). */
LockextWaitSlot *
WaitQueueMySlot(void)
{
	if (MyProc == NULL || MyProc->pgprocno < 0 || MyProc->pgprocno >= queue_state->nslots)
		return NULL;
	return SlotAt(MyProc->pgprocno);
}

/* Counts one more waiter if fewer than lockext.max_waiters wait now. */
bool
WaitQueueAdmit(void)
{
	uint32		now = pg_atomic_read_u32(&queue_state->waiting_now);

	do
	{
		if ((int) now >= lockext_max_waiters)
			return false;
	} while (!pg_atomic_compare_exchange_u32(&queue_state->waiting_now, &now, now + 1));
	pg_atomic_fetch_add_u64(&queue_state->waits, 1);
	return true;
}

void
WaitQueueLeave(bool timed_out)
{
	pg_atomic_fetch_sub_u32(&queue_state->waiting_now, 1);
	if (timed_out)
		pg_atomic_fetch_add_u64(&queue_state->wait_timeouts, 1);
}

/*
 * lib/ilist.h's dlist_foreach and dlist_container check types with a C-only
 * builtin; the same walk by hand.
 */
static inline LockextWaitSlot *
SlotOfLink(dlist_node *node)
{
	return (LockextWaitSlot *) ((char *) node - offsetof(LockextWaitSlot, link));
}

#define FOREACH_QUEUED(slot, part)                                                                 \
	for (dlist_node *node_ = (part)->waiters.head.next;                                           \
		 node_ != &(part)->waiters.head && ((slot) = SlotOfLink(node_), true); node_ = node_->next)

static bool
SlotMatches(const LockextWaitSlot *slot, Oid dbid, uint32 hash, const char *key, uint32 key_len)
{
	return slot->dbid == dbid && slot->hash == hash && slot->key_len == key_len &&
		memcmp(slot->key, key, key_len) == 0;
}

void
WaitQueueAppend(LockextWaitSlot *slot, const LockextProbeKey *probe)
{
	WaitPartition *part;

	Assert(slot->state == LOCKEXT_WAIT_IDLE);
	slot->partition = LockTablePartitionOf(probe);
	slot->dbid = probe->dbid;
	slot->hash = probe->hash;
	slot->key_len = probe->len;
	memcpy(slot->key, probe->bytes, probe->len);
	slot->latch = MyLatch;
	slot->state = LOCKEXT_WAIT_QUEUED;
	part = &queue_state->partitions[slot->partition];
	dlist_push_tail(&part->waiters, &slot->link);
	pg_atomic_fetch_add_u32(&part->count, 1);
}

/* Unlinks a QUEUED slot; the caller sets its new state. */
void
WaitQueueRemove(LockextWaitSlot *slot)
{
	WaitPartition *part = &queue_state->partitions[slot->partition];

	Assert(slot->state == LOCKEXT_WAIT_QUEUED);
	dlist_delete(&slot->link);
	pg_atomic_fetch_sub_u32(&part->count, 1);
}

bool
WaitQueueHasWaiters(int partition)
{
	return pg_atomic_read_u32(&queue_state->partitions[partition].count) != 0;
}

/* The oldest waiter for probe's key, or NULL. */
LockextWaitSlot *
WaitQueueHead(const LockextProbeKey *probe)
{
	int			partition = LockTablePartitionOf(probe);
	LockextWaitSlot *slot;

	if (!WaitQueueHasWaiters(partition))
		return NULL;
	FOREACH_QUEUED(slot, &queue_state->partitions[partition])
	{
		if (SlotMatches(slot, probe->dbid, probe->hash, probe->bytes, probe->len))
			return slot;
	}
	return NULL;
}

/* True if any backend waits now (no lock). */
bool
WaitQueueAnyWaiters(void)
{
	return pg_atomic_read_u32(&queue_state->waiting_now) != 0;
}

/* Waiters for one key (lockext_leases); the caller holds its partition lock. */
uint32
WaitQueueCountFor(Oid dbid, const char *key, uint32 key_len)
{
	LockextProbeKey probe;
	LockextWaitSlot *slot;
	uint32		n = 0;
	int			partition;

	LockTableMakeProbe(&probe, dbid, key, key_len);
	partition = LockTablePartitionOf(&probe);
	if (!WaitQueueHasWaiters(partition))
		return 0;
	FOREACH_QUEUED(slot, &queue_state->partitions[partition])
	{
		if (SlotMatches(slot, dbid, probe.hash, key, key_len))
			n++;
	}
	return n;
}

void
WaitQueueWake(LockextWaitSlot *slot)
{
	SetLatch(slot->latch);
}

/* Every queued waiter re-checks its lease and its bound (racy reads: a wake-up is harmless). */
void
WaitQueueWakeAll(void)
{
	for (int i = 0; i < queue_state->nslots; i++)
	{
		LockextWaitSlot *slot = SlotAt(i);

		if (slot->state == LOCKEXT_WAIT_QUEUED && slot->latch != NULL)
			SetLatch(slot->latch);
	}
}

void
WaitQueueCounts(LockextWaitCounts *counts)
{
	counts->waiting_now = pg_atomic_read_u32(&queue_state->waiting_now);
	counts->waits = pg_atomic_read_u64(&queue_state->waits);
	counts->wait_timeouts = pg_atomic_read_u64(&queue_state->wait_timeouts);
}

void
WaitQueueResetCounts(void)
{
	pg_atomic_write_u64(&queue_state->waits, 0);
	pg_atomic_write_u64(&queue_state->wait_timeouts, 0);
}
