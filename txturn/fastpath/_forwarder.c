/*
 * txturn.fastpath._forwarder: the compiled fast path of the UDP relay.
 *
 * The Python core decides; this module only repeats decisions it was
 * given.  The core installs forwarding entries when it relays a packet or
 * binds a channel, and removes them the moment the state behind them goes
 * (an expiring permission, channel or allocation).  For each datagram read
 * from a pumped socket, this module either forwards it as an entry allows,
 * or hands it to Python unchanged.  It holds no timer and reads no clock.
 *
 * Entries (IPv4 and IPv6: each address is kept with its family, as the
 * socket it came from or goes to spells it, so an IPv4 client of a
 * dual-stack socket is ::ffff:a.b.c.d there as it is in Python):
 *
 *   CLIENT   (listening fd, client address)  -> allocation slot
 *   CHANNEL  (slot, channel number)          -> relay fd, peer address
 *   SEND     (slot, peer address)            -> relay fd
 *   PEER     (relay fd, peer address)        -> slot, channel number or 0
 *                                               for a Data indication
 *
 * Stream clients (TCP and TLS) have a slot too, keyed by a stream key
 * (a negative number the Python side draws) in place of a listening fd:
 * forward_frames() forwards the whole ChannelData and Send frames at the
 * head of what the connection read, and datagrams from peers to such a
 * client are framed here (ChannelData padded to 4 bytes, RFC 8656
 * section 12.5) and handed, joined per read, to the slot's writer: the
 * connection's own transport, which stays the only writer of its socket.
 * DTLS clients are the same but for framing: forward_datagram() takes one
 * decrypted message, and the writer (the session, which encrypts) gets
 * one unpadded message a call.
 *
 * Every length read from a datagram is checked against the bytes that
 * arrived before it is used; see decide_client() and decide_peer().
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef __linux__
#error "the fast path uses recvmmsg and sendmmsg (Linux); the pure Python path serves elsewhere"
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BATCH 32
#define BUFFER_SIZE 65536
#define MAGIC_COOKIE 0x2112A442u
#define MAX_INDICATION_DATA (0xFFFF - 24 - 4 - 3)
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
/* UDP GSO: datagrams to one destination go in one send, cut by the kernel
 * into segments of one size.  A segment must fit the path MTU, or the send
 * fails: only datagrams that fit a 1500-byte Ethernet MTU are joined. */
#define GSO_MAX_SEGMENT 1400
/* Flushes sent one by one after the kernel refused a GSO send, before
 * GSO is tried again. */
#define GSO_RETRY_FLUSHES 100000
#define GSO_MAX_TOTAL 60000

enum { K_CLIENT = 1, K_CHANNEL = 2, K_SEND = 3, K_PEER = 4, KINDS = 5 };

/* Send and peer entries one allocation may hold; past that its traffic
 * stays on the Python path, which bounds its own state.  Peers choose
 * their ports: without a bound, one allocation could grow the table
 * without end (one entry per peer address and port). */
#define MAX_PER_SLOT 64
/* The node array never shrinks below this, nor the buckets. */
#define INITIAL_NODES 64

/* An address and port as a socket spells them: AF_INET (the first 4
 * bytes of addr, the rest zero) or AF_INET6 (scope id 0: scoped addresses
 * always take the Python path). */
typedef struct {
    uint32_t family;
    uint32_t port;    /* host order */
    uint8_t addr[16]; /* network order */
} endpoint_t;

/* What identifies an entry; zeroed before it is filled, compared whole
 * (5 words, hashed whole). */
typedef struct {
    uint32_t kind;
    int32_t fd;
    int32_t slot;
    uint32_t number;  /* channel number */
    endpoint_t at;    /* CLIENT: the client.  SEND, PEER: the peer. */
} key_t_;

#define KEY_WORDS (sizeof(key_t_) / 8)
_Static_assert(sizeof(key_t_) == 40, "keys hash as 5 words, without padding");

typedef struct {
    key_t_ key;
    int32_t next;       /* next node in the bucket, or -1; free list link */
    int32_t owner;      /* the allocation slot the node belongs to */
    int32_t prev_owned; /* the slot's list of nodes */
    int32_t next_owned;
    /* CHANNEL, SEND: relay fd.  PEER: listening fd. */
    int32_t fd;
    /* PEER: channel number, or 0 for a Data indication. */
    uint16_t number;
    /* CHANNEL: peer.  PEER: client. */
    endpoint_t to;
} node_t;

typedef struct {
    int in_use;
    int32_t owned;  /* first node of the slot, or -1 */
    int32_t counts[KINDS];  /* its nodes of each kind */
    uint8_t txid_prefix[8];
    unsigned long long counters[4];  /* to peers: packets, bytes; to the client: packets, bytes */
    /* A stream or DTLS client's writer(data, frames), or NULL (a UDP
     * client): TCP and TLS get frames joined and ChannelData padded; DTLS
     * (per_frame) one call per message, unpadded, as one record each. */
    PyObject *writer;
    int per_frame;
} slot_t;

typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} sockaddr_any_t;

/* The longest header put before a relayed payload: a Data indication's
 * 20-byte STUN header, an IPv6 XOR-PEER-ADDRESS (24) and DATA's (4). */
#define HEADER_MAX 48

typedef struct {
    PyObject_HEAD
    uint64_t k0, k1;
    int32_t *buckets;
    uint32_t mask;
    node_t *nodes;
    int32_t node_capacity;
    int32_t free_node;
    int32_t node_count;
    slot_t *slots;
    int32_t slot_capacity;
    int32_t free_slot_hint;
    uint32_t txid_counter;
    unsigned long long send_errors;
    /* recvmmsg */
    unsigned char *buffers;
    struct mmsghdr rmsgs[BATCH];
    struct iovec riov[BATCH];
    sockaddr_any_t rnames[BATCH];
    /* sendmmsg: one queue, flushed whenever its socket changes */
    int send_fd;
    int send_count;
    struct mmsghdr smsgs[BATCH];
    struct iovec siov[BATCH][4];
    sockaddr_any_t snames[BATCH];
    endpoint_t sdestinations[BATCH];
    unsigned char sheaders[BATCH][HEADER_MAX];
    size_t slengths[BATCH];
    /* tuning: datagrams per recvmmsg and per sendmmsg; UDP GSO on or off */
    int batch;
    int gso;          /* joining now */
    int gso_wanted;   /* as tuned: GSO is retried after a refusal */
    unsigned long long gso_off_flushes;
    unsigned long long gso_sends;
    /* the queue joined into GSO sends */
    struct mmsghdr gmsgs[BATCH];
    struct iovec giov[BATCH * 4];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } gcontrol[BATCH];
    int gfirst[BATCH];
    int gcount[BATCH];
    /* Frames for one stream client, joined until a flush. */
    unsigned char *stream_buffer;
    size_t stream_length, stream_capacity;
    int32_t stream_slot;
    int stream_frames;
} Forwarder;

/* -- SipHash-1-3, keyed per forwarder: peers choose their addresses -- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                              \
    do {                                                                      \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);             \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);             \
    } while (0)

static uint64_t
hash_key(const Forwarder *self, const key_t_ *key)
{
    uint64_t words[KEY_WORDS];
    memcpy(words, key, sizeof(words));
    uint64_t v0 = self->k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = self->k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = self->k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = self->k1 ^ 0x7465646279746573ULL;
    for (size_t i = 0; i < KEY_WORDS; i++) {
        v3 ^= words[i];
        SIPROUND;
        v0 ^= words[i];
    }
    uint64_t b = ((uint64_t)sizeof(words)) << 56;
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* -- the table ------------------------------------------------------------ */

static int32_t
find(const Forwarder *self, const key_t_ *key)
{
    int32_t i = self->buckets[hash_key(self, key) & self->mask];
    while (i >= 0) {
        if (memcmp(&self->nodes[i].key, key, sizeof(*key)) == 0)
            return i;
        i = self->nodes[i].next;
    }
    return -1;
}

static int
grow_buckets(Forwarder *self)
{
    uint32_t size = (self->mask + 1) * 2;
    int32_t *buckets = PyMem_Malloc(sizeof(int32_t) * size);
    if (buckets == NULL)
        return -1;
    for (uint32_t i = 0; i < size; i++)
        buckets[i] = -1;
    for (int32_t i = 0; i < self->node_capacity; i++) {
        node_t *node = &self->nodes[i];
        if (node->key.kind == 0)
            continue;
        uint32_t b = hash_key(self, &node->key) & (size - 1);
        node->next = buckets[b];
        buckets[b] = i;
    }
    PyMem_Free(self->buckets);
    self->buckets = buckets;
    self->mask = size - 1;
    return 0;
}

static int
grow_nodes(Forwarder *self)
{
    int32_t old = self->node_capacity;
    if (old > INT32_MAX / 2) {
        PyErr_NoMemory();
        return -1;
    }
    int32_t size = old * 2;
    node_t *nodes = PyMem_Realloc(self->nodes, sizeof(node_t) * (size_t)size);
    if (nodes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(nodes + old, 0, sizeof(node_t) * (size_t)(size - old));
    for (int32_t i = size - 1; i >= old; i--) {
        nodes[i].next = self->free_node;
        self->free_node = i;
    }
    self->nodes = nodes;
    self->node_capacity = size;
    return 0;
}

static void drop_node(Forwarder *self, int32_t i);
static void stream_flush(Forwarder *self);

/* Insert or overwrite the node for key, owned by slot owner. */
static node_t *
put(Forwarder *self, const key_t_ *key, int32_t owner)
{
    int32_t i = find(self, key);
    if (i >= 0 && self->nodes[i].owner == owner)
        return &self->nodes[i];
    if (i >= 0)
        drop_node(self, i);
    if (self->free_node < 0 && grow_nodes(self) < 0)
        return NULL;
    if ((uint32_t)self->node_count + 1 > self->mask + 1 && grow_buckets(self) < 0) {
        PyErr_NoMemory();
        return NULL;
    }
    i = self->free_node;
    node_t *node = &self->nodes[i];
    self->free_node = node->next;
    memset(node, 0, sizeof(*node));
    node->key = *key;
    uint32_t b = hash_key(self, key) & self->mask;
    node->next = self->buckets[b];
    self->buckets[b] = i;
    node->owner = owner;
    self->slots[owner].counts[key->kind]++;
    node->prev_owned = -1;
    node->next_owned = self->slots[owner].owned;
    if (node->next_owned >= 0)
        self->nodes[node->next_owned].prev_owned = i;
    self->slots[owner].owned = i;
    self->node_count++;
    return node;
}

static void
drop_node(Forwarder *self, int32_t i)
{
    node_t *node = &self->nodes[i];
    uint32_t b = hash_key(self, &node->key) & self->mask;
    int32_t *link = &self->buckets[b];
    while (*link != i)
        link = &self->nodes[*link].next;
    *link = node->next;
    if (node->prev_owned >= 0)
        self->nodes[node->prev_owned].next_owned = node->next_owned;
    else
        self->slots[node->owner].owned = node->next_owned;
    if (node->next_owned >= 0)
        self->nodes[node->next_owned].prev_owned = node->prev_owned;
    self->slots[node->owner].counts[node->key.kind]--;
    memset(node, 0, sizeof(*node));
    node->next = self->free_node;
    self->free_node = i;
    self->node_count--;
}

static void
drop_key(Forwarder *self, const key_t_ *key)
{
    int32_t i = find(self, key);
    if (i >= 0)
        drop_node(self, i);
}

/* Give memory back once most nodes are gone: live nodes move to the
 * front of a smaller array (links renumbered), and the buckets shrink
 * with it.  Called at the end of the methods that remove, never while a
 * caller holds a node index. */
static void
shrink(Forwarder *self)
{
    int32_t capacity = self->node_capacity;
    if (capacity <= INITIAL_NODES || self->node_count >= capacity / 4)
        return;
    int32_t size = capacity / 2;
    while (size / 2 >= INITIAL_NODES && self->node_count < size / 4)
        size /= 2;
    int32_t *renumber = PyMem_Malloc(sizeof(int32_t) * (size_t)capacity);
    node_t *nodes = PyMem_Calloc((size_t)size, sizeof(node_t));
    uint32_t bucket_count = 64;
    while (bucket_count < (uint32_t)size)
        bucket_count *= 2;
    int32_t *buckets = PyMem_Malloc(sizeof(int32_t) * bucket_count);
    if (renumber == NULL || nodes == NULL || buckets == NULL) {
        /* Keep the larger table: it still works. */
        PyMem_Free(renumber);
        PyMem_Free(nodes);
        PyMem_Free(buckets);
        return;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < capacity; i++)
        renumber[i] = self->nodes[i].key.kind != 0 ? n++ : -1;
    for (int32_t i = 0; i < capacity; i++) {
        if (renumber[i] < 0)
            continue;
        node_t *node = &nodes[renumber[i]];
        *node = self->nodes[i];
        node->prev_owned = node->prev_owned >= 0 ? renumber[node->prev_owned] : -1;
        node->next_owned = node->next_owned >= 0 ? renumber[node->next_owned] : -1;
    }
    for (int32_t slot = 0; slot < self->slot_capacity; slot++)
        if (self->slots[slot].in_use && self->slots[slot].owned >= 0)
            self->slots[slot].owned = renumber[self->slots[slot].owned];
    for (uint32_t b = 0; b < bucket_count; b++)
        buckets[b] = -1;
    for (int32_t i = 0; i < n; i++) {
        uint32_t b = hash_key(self, &nodes[i].key) & (bucket_count - 1);
        nodes[i].next = buckets[b];
        buckets[b] = i;
    }
    self->free_node = -1;
    for (int32_t i = size - 1; i >= n; i--) {
        nodes[i].next = self->free_node;
        self->free_node = i;
    }
    PyMem_Free(renumber);
    PyMem_Free(self->nodes);
    PyMem_Free(self->buckets);
    self->nodes = nodes;
    self->node_capacity = size;
    self->buckets = buckets;
    self->mask = bucket_count - 1;
}

/* Whether the slot may add a node of this kind for key: an entry it
 * has already is overwritten; a new one must fit under the bound. */
static int
room_for(Forwarder *self, const key_t_ *key, int32_t slot)
{
    int32_t i = find(self, key);
    if (i >= 0 && self->nodes[i].owner == slot)
        return 1;
    return self->slots[slot].counts[key->kind] < MAX_PER_SLOT;
}

static const endpoint_t NOWHERE;

static void
make_key(key_t_ *key, uint32_t kind, int32_t fd, int32_t slot, uint32_t number,
         const endpoint_t *at)
{
    memset(key, 0, sizeof(*key));
    key->kind = kind;
    key->fd = fd;
    key->slot = slot;
    key->number = number;
    key->at = *at;
}

static int
same_host(const endpoint_t *a, const endpoint_t *b)
{
    return a->family == b->family && memcmp(a->addr, b->addr, 16) == 0;
}

/* -- addresses --------------------------------------------------------------- */

/* An address literal as Python spells it: IPv4, or IPv6 without a scope. */
static int
parse_host(const char *host, endpoint_t *out)
{
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IPv4 or IPv6 address (without a scope): %s", host);
    return -1;
}

static int
parse_address(PyObject *address, endpoint_t *out)
{
    const char *host;
    int p;
    if (!PyArg_ParseTuple(address, "si", &host, &p) || parse_host(host, out) < 0)
        return -1;
    if (p < 0 || p > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "not a port: %d", p);
        return -1;
    }
    out->port = (uint32_t)p;
    return 0;
}

/* The endpoint a datagram came from, or 0 when this module leaves it to
 * Python (another family, or a scoped IPv6 address: Python spells those
 * with their interface, which no entry names). */
static int
from_sockaddr(const sockaddr_any_t *name, socklen_t length, endpoint_t *out)
{
    memset(out, 0, sizeof(*out));
    if (length == sizeof(struct sockaddr_in) && name->sa.sa_family == AF_INET) {
        out->family = AF_INET;
        memcpy(out->addr, &name->in4.sin_addr, 4);
        out->port = ntohs(name->in4.sin_port);
        return 1;
    }
    if (length == sizeof(struct sockaddr_in6) && name->sa.sa_family == AF_INET6
        && name->in6.sin6_scope_id == 0) {
        out->family = AF_INET6;
        memcpy(out->addr, &name->in6.sin6_addr, 16);
        out->port = ntohs(name->in6.sin6_port);
        return 1;
    }
    return 0;
}

static socklen_t
to_sockaddr(const endpoint_t *at, sockaddr_any_t *name)
{
    memset(name, 0, sizeof(*name));
    if (at->family == AF_INET) {
        name->in4.sin_family = AF_INET;
        memcpy(&name->in4.sin_addr, at->addr, 4);
        name->in4.sin_port = htons((uint16_t)at->port);
        return sizeof(struct sockaddr_in);
    }
    name->in6.sin6_family = AF_INET6;
    memcpy(&name->in6.sin6_addr, at->addr, 16);
    name->in6.sin6_port = htons((uint16_t)at->port);
    return sizeof(struct sockaddr_in6);
}

static int
check_slot(Forwarder *self, int slot)
{
    if (slot < 0 || slot >= self->slot_capacity || !self->slots[slot].in_use) {
        PyErr_Format(PyExc_KeyError, "no allocation slot %d", slot);
        return -1;
    }
    return 0;
}

/* (slot, descriptor, (host, port)): what add_send and remove_peer take. */
static int
parse_slot_fd_peer(Forwarder *self, PyObject *args, int *slot, int *fd, endpoint_t *peer)
{
    PyObject *address;
    if (!PyArg_ParseTuple(args, "iiO", slot, fd, &address) || check_slot(self, *slot) < 0
        || parse_address(address, peer) < 0)
        return -1;
    return 0;
}

/* -- methods the core calls ------------------------------------------------ */

static PyObject *
add_allocation(Forwarder *self, PyObject *args)
{
    int fd, joined = 1;
    PyObject *client, *writer = NULL;
    Py_buffer prefix;
    if (!PyArg_ParseTuple(args, "iOy*|Op", &fd, &client, &prefix, &writer, &joined))
        return NULL;
    if (writer == Py_None)
        writer = NULL;
    if (writer != NULL && !PyCallable_Check(writer)) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_TypeError, "a stream client's writer is callable");
        return NULL;
    }
    endpoint_t at;
    if (prefix.len != 8) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "the transaction id prefix is 8 bytes");
        return NULL;
    }
    if (parse_address(client, &at) < 0) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    key_t_ key;
    make_key(&key, K_CLIENT, fd, -1, 0, &at);
    if (find(self, &key) >= 0) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_KeyError, "that 5-tuple has an allocation slot already");
        return NULL;
    }
    int32_t slot = -1;
    for (int32_t n = 0; n < self->slot_capacity; n++) {
        int32_t i = (self->free_slot_hint + n) % self->slot_capacity;
        if (!self->slots[i].in_use) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        int32_t old = self->slot_capacity;
        if (old > INT32_MAX / 2) {
            PyBuffer_Release(&prefix);
            return PyErr_NoMemory();
        }
        slot_t *slots = PyMem_Realloc(self->slots, sizeof(slot_t) * (size_t)old * 2);
        if (slots == NULL) {
            PyBuffer_Release(&prefix);
            return PyErr_NoMemory();
        }
        memset(slots + old, 0, sizeof(slot_t) * (size_t)old);
        self->slots = slots;
        self->slot_capacity = old * 2;
        slot = old;
    }
    slot_t *s = &self->slots[slot];
    memset(s, 0, sizeof(*s));
    s->in_use = 1;
    s->owned = -1;
    memcpy(s->txid_prefix, prefix.buf, 8);
    PyBuffer_Release(&prefix);
    if (put(self, &key, slot) == NULL) {
        s->in_use = 0;
        return NULL;
    }
    Py_XINCREF(writer);
    s->writer = writer;
    s->per_frame = !joined;
    self->free_slot_hint = (slot + 1) % self->slot_capacity;
    return PyLong_FromLong(slot);
}

static PyObject *
counters_of(slot_t *s)
{
    PyObject *out = Py_BuildValue("(KKKK)", s->counters[0], s->counters[1], s->counters[2],
                                  s->counters[3]);
    memset(s->counters, 0, sizeof(s->counters));
    return out;
}

static PyObject *
take_counters(Forwarder *self, PyObject *args)
{
    int slot;
    if (!PyArg_ParseTuple(args, "i", &slot) || check_slot(self, slot) < 0)
        return NULL;
    return counters_of(&self->slots[slot]);
}

static PyObject *
remove_allocation(Forwarder *self, PyObject *args)
{
    int slot;
    if (!PyArg_ParseTuple(args, "i", &slot) || check_slot(self, slot) < 0)
        return NULL;
    stream_flush(self);
    slot_t *s = &self->slots[slot];
    while (s->owned >= 0)
        drop_node(self, s->owned);
    PyObject *out = counters_of(s);
    s->in_use = 0;
    Py_CLEAR(s->writer);
    shrink(self);
    return out;
}

static PyObject *
add_channel(Forwarder *self, PyObject *args)
{
    int slot, channel, fd;
    PyObject *address;
    endpoint_t peer;
    if (!PyArg_ParseTuple(args, "iiiO", &slot, &channel, &fd, &address)
        || check_slot(self, slot) < 0 || parse_address(address, &peer) < 0)
        return NULL;
    if (channel < 0x4000 || channel > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "channel numbers are 0x4000 to 0x7FFF");
        return NULL;
    }
    key_t_ key;
    make_key(&key, K_CHANNEL, -1, slot, (uint32_t)channel, &NOWHERE);
    node_t *node = put(self, &key, slot);
    if (node == NULL)
        return NULL;
    node->fd = fd;
    node->to = peer;
    Py_RETURN_NONE;
}

static PyObject *
add_send(Forwarder *self, PyObject *args)
{
    int slot, fd;
    endpoint_t peer;
    if (parse_slot_fd_peer(self, args, &slot, &fd, &peer) < 0)
        return NULL;
    key_t_ key;
    make_key(&key, K_SEND, -1, slot, 0, &peer);
    if (!room_for(self, &key, slot))
        Py_RETURN_FALSE;
    node_t *node = put(self, &key, slot);
    if (node == NULL)
        return NULL;
    node->fd = fd;
    Py_RETURN_TRUE;
}

static PyObject *
add_peer(Forwarder *self, PyObject *args)
{
    int slot, relay_fd, listen_fd, channel;
    PyObject *peer_address, *client_address;
    endpoint_t peer, client;
    if (!PyArg_ParseTuple(args, "iiOiOi", &slot, &relay_fd, &peer_address, &listen_fd,
                          &client_address, &channel)
        || check_slot(self, slot) < 0 || parse_address(peer_address, &peer) < 0
        || parse_address(client_address, &client) < 0)
        return NULL;
    if (channel != 0 && (channel < 0x4000 || channel > 0x7FFF)) {
        PyErr_SetString(PyExc_ValueError, "a channel number, or 0 for Data indications");
        return NULL;
    }
    key_t_ key;
    make_key(&key, K_PEER, relay_fd, -1, 0, &peer);
    if (!room_for(self, &key, slot))
        Py_RETURN_FALSE;
    node_t *node = put(self, &key, slot);
    if (node == NULL)
        return NULL;
    node->fd = listen_fd;
    node->to = client;
    node->number = (uint16_t)channel;
    Py_RETURN_TRUE;
}

static PyObject *
remove_channel(Forwarder *self, PyObject *args)
{
    int slot, channel;
    if (!PyArg_ParseTuple(args, "ii", &slot, &channel) || check_slot(self, slot) < 0)
        return NULL;
    key_t_ key;
    make_key(&key, K_CHANNEL, -1, slot, (uint32_t)channel, &NOWHERE);
    drop_key(self, &key);
    Py_RETURN_NONE;
}

static PyObject *
remove_peer(Forwarder *self, PyObject *args)
{
    int slot, fd;
    endpoint_t peer;
    if (parse_slot_fd_peer(self, args, &slot, &fd, &peer) < 0)
        return NULL;
    key_t_ key;
    make_key(&key, K_PEER, fd, -1, 0, &peer);
    int32_t i = find(self, &key);
    if (i >= 0 && self->nodes[i].owner == slot)
        drop_node(self, i);
    Py_RETURN_NONE;
}

/* Remove the slot's nodes that match: kind (0: any), relay fd (-1: any),
 * peer host (NULL: any; CHANNEL nodes match on their peer). */
static void
remove_matching(Forwarder *self, int32_t slot, uint32_t kind, int32_t fd, const endpoint_t *host)
{
    int32_t i = self->slots[slot].owned;
    while (i >= 0) {
        node_t *node = &self->nodes[i];
        int32_t next = node->next_owned;
        const endpoint_t *node_host = node->key.kind == K_CHANNEL ? &node->to : &node->key.at;
        int32_t node_fd = node->key.kind == K_PEER ? node->key.fd : node->fd;
        if (node->key.kind != K_CLIENT && (kind == 0 || node->key.kind == kind)
            && (fd < 0 || node_fd == fd) && (host == NULL || same_host(node_host, host)))
            drop_node(self, i);
        i = next;
    }
}

static PyObject *
remove_host(Forwarder *self, PyObject *args)
{
    /* A permission expired: nothing more from or (by Send) to that host. */
    int slot;
    const char *host;
    endpoint_t at;
    if (!PyArg_ParseTuple(args, "is", &slot, &host) || check_slot(self, slot) < 0
        || parse_host(host, &at) < 0)
        return NULL;
    remove_matching(self, slot, K_SEND, -1, &at);
    remove_matching(self, slot, K_PEER, -1, &at);
    shrink(self);
    Py_RETURN_NONE;
}

static PyObject *
remove_relay(Forwarder *self, PyObject *args)
{
    int slot, fd;
    if (!PyArg_ParseTuple(args, "ii", &slot, &fd) || check_slot(self, slot) < 0)
        return NULL;
    if (fd >= 0)
        remove_matching(self, slot, 0, fd, NULL);
    shrink(self);
    Py_RETURN_NONE;
}

static PyObject *
clear_sends(Forwarder *self, PyObject *noargs)
{
    for (int32_t slot = 0; slot < self->slot_capacity; slot++)
        if (self->slots[slot].in_use)
            remove_matching(self, slot, K_SEND, -1, NULL);
    shrink(self);
    Py_RETURN_NONE;
}

static PyObject *
entry_count(Forwarder *self, PyObject *noargs)
{
    return PyLong_FromLong(self->node_count);
}

static PyObject *
entry_capacity(Forwarder *self, PyObject *noargs)
{
    return PyLong_FromLong(self->node_capacity);
}

/* -- deciding one datagram ------------------------------------------------- */

static inline uint16_t
be16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t crc_table[256];

static void
make_crc_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t
crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* A datagram's fate: where to send which bytes, or up to Python. */
typedef struct {
    int forwarded;          /* 0: hand to Python */
    int fd;                 /* the socket to send on, or a stream key */
    endpoint_t to;
    int32_t slot;
    int to_client;
    const unsigned char *payload;
    size_t length;          /* of payload */
    size_t counted;         /* bytes counted: the payload relayed */
    unsigned char header[HEADER_MAX];
    size_t header_length;
    size_t padding;
    int stream;             /* to a stream client: through its writer */
} decision_t;

/* The attributes a Send indication may carry and still be forwarded here. */
#define A_XOR_PEER_ADDRESS 0x0012
#define A_DATA 0x0013
#define A_DONT_FRAGMENT 0x001A
#define A_SOFTWARE 0x8022
#define A_FINGERPRINT 0x8028
#define MAX_SEND_ATTRIBUTES 128

/* XOR-PEER-ADDRESS's value (RFC 8489 section 14.2) <-> an endpoint: the
 * port XORed with the cookie's top half, the address with the cookie and,
 * for IPv6, the transaction id that follows it in the header. */
static void
unxor_address(const unsigned char *value, const unsigned char *header, endpoint_t *out)
{
    memset(out, 0, sizeof(*out));
    out->port = be16(value + 2) ^ (MAGIC_COOKIE >> 16);
    size_t size = value[1] == 0x01 ? 4 : 16;
    out->family = value[1] == 0x01 ? AF_INET : AF_INET6;
    for (size_t i = 0; i < size; i++)
        out->addr[i] = value[4 + i] ^ header[4 + i];
}

/* The whole attribute, into out; returns its length (12 or 24). */
static size_t
xor_address_attribute(const endpoint_t *at, const unsigned char *header, unsigned char *out)
{
    size_t size = at->family == AF_INET ? 4 : 16;
    out[0] = 0x00;
    out[1] = 0x12;
    out[2] = 0x00;
    out[3] = (unsigned char)(4 + size);
    out[4] = 0x00;
    out[5] = at->family == AF_INET ? 0x01 : 0x02;
    uint16_t port = (uint16_t)(at->port ^ (MAGIC_COOKIE >> 16));
    out[6] = (unsigned char)(port >> 8);
    out[7] = (unsigned char)port;
    for (size_t i = 0; i < size; i++)
        out[8 + i] = at->addr[i] ^ header[4 + i];
    return 8 + size;
}

/*
 * A Send indication the Python path would relay, in any order of its
 * attributes: one XOR-PEER-ADDRESS (IPv4 or IPv6), one DATA, and
 * DONT-FRAGMENT (empty), SOFTWARE and FINGERPRINT (last, and right) or
 * not; browsers, coturn's client, pjnath, libnice and pion each write
 * their own order.  Anything else (another attribute, a duplicate, a bad
 * length, family or padding) returns 0 and goes up to Python unchanged,
 * which decides as txturn.wire.stun.decode and
 * PeerRequests.send_indication do: so nothing is forwarded that the
 * Python path would drop.  Every length is checked against the bytes
 * that arrived before it is used.
 */
static int
parse_send(const unsigned char *data, size_t n, const unsigned char **payload, size_t *length,
           endpoint_t *peer_at)
{
    if (n < 20 || data[0] != 0x00 || data[1] != 0x16 || be32(data + 4) != MAGIC_COOKIE
        || 20 + (size_t)be16(data + 2) != n)
        return 0;
    size_t offset = 20;
    int count = 0;
    const unsigned char *peer = NULL;
    *payload = NULL;
    *length = 0;
    while (offset < n) {
        if (++count > MAX_SEND_ATTRIBUTES || n - offset < 4)
            return 0;
        unsigned type = be16(data + offset);
        size_t size = be16(data + offset + 2);
        if (size > n - offset - 4)
            return 0;
        size_t next = offset + 4 + size + ((4 - (size & 3)) & 3);
        if (next > n)
            return 0;
        const unsigned char *value = data + offset + 4;
        switch (type) {
        case A_XOR_PEER_ADDRESS:
            if (peer != NULL || value[0] != 0x00
                || !((size == 8 && value[1] == 0x01) || (size == 20 && value[1] == 0x02)))
                return 0;
            peer = value;
            break;
        case A_DATA:
            if (*payload != NULL)
                return 0;
            *payload = value;
            *length = size;
            break;
        case A_DONT_FRAGMENT:
            if (size != 0)
                return 0;
            break;
        case A_SOFTWARE:
            break;
        case A_FINGERPRINT:
            /* Last, and over everything before it, as decode checks. */
            if (size != 4 || next != n
                || be32(value) != (crc32(data, offset) ^ 0x5354554Eu))
                return 0;
            break;
        default:
            return 0;
        }
        offset = next;
    }
    if (peer == NULL || *payload == NULL)
        return 0;
    unxor_address(peer, data, peer_at);
    return 1;
}

static void
forward(decision_t *out, int fd, const endpoint_t *to, int32_t slot, int to_client,
        const unsigned char *payload, size_t length)
{
    out->forwarded = 1;
    out->fd = fd;
    out->to = *to;
    out->slot = slot;
    out->to_client = to_client;
    out->payload = payload;
    out->length = out->counted = length;
    out->header_length = out->padding = 0;
    out->stream = 0;
}

/*
 * From a client on listening socket fd: ChannelData on a channel with an
 * entry, or a Send indication parse_send accepts to a peer with an entry.
 */
static void
decide_client(Forwarder *self, int fd, const unsigned char *data, size_t n,
              const endpoint_t *from, decision_t *out)
{
    out->forwarded = out->stream = 0;
    if (n < 4)
        return;
    key_t_ key;
    if (data[0] >= 0x40 && data[0] <= 0x7F) {
        size_t length = be16(data + 2);
        if (length > n - 4)
            return;
        make_key(&key, K_CLIENT, fd, -1, 0, from);
        int32_t c = find(self, &key);
        if (c < 0)
            return;
        int32_t slot = self->nodes[c].owner;
        make_key(&key, K_CHANNEL, -1, slot, be16(data), &NOWHERE);
        int32_t i = find(self, &key);
        if (i >= 0)
            forward(out, self->nodes[i].fd, &self->nodes[i].to, slot, 0, data + 4, length);
        return;
    }
    const unsigned char *payload = NULL;
    size_t length = 0;
    endpoint_t peer;
    if (!parse_send(data, n, &payload, &length, &peer))
        return;
    make_key(&key, K_CLIENT, fd, -1, 0, from);
    int32_t c = find(self, &key);
    if (c < 0)
        return;
    int32_t slot = self->nodes[c].owner;
    make_key(&key, K_SEND, -1, slot, 0, &peer);
    int32_t i = find(self, &key);
    if (i >= 0)
        forward(out, self->nodes[i].fd, &peer, slot, 0, payload, length);
}

/* From a peer on relay socket fd: ChannelData or a Data indication. */
static void
decide_peer(Forwarder *self, int fd, const unsigned char *data, size_t n,
            const endpoint_t *from, decision_t *out)
{
    out->forwarded = out->stream = 0;
    key_t_ key;
    make_key(&key, K_PEER, fd, -1, 0, from);
    int32_t i = find(self, &key);
    if (i < 0)
        return;
    const node_t *node = &self->nodes[i];
    unsigned char *h = out->header;
    size_t header_length, padding = 0;
    const slot_t *owner = &self->slots[node->owner];
    int stream = owner->writer != NULL;
    int padded = stream && !owner->per_frame;
    if (node->number) {
        if (n > 0xFFFF)
            return;
        h[0] = (unsigned char)(node->number >> 8);
        h[1] = (unsigned char)node->number;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        header_length = 4;
        if (padded)
            padding = (4 - (n & 3)) & 3;
    } else {
        if (n > MAX_INDICATION_DATA)
            return;
        padding = (4 - (n & 3)) & 3;
        /* The top bit keeps these apart from the ids the Python path
         * gives the same allocation. */
        uint32_t counter = 0x80000000u | self->txid_counter++;
        h[0] = 0x00;
        h[1] = 0x17;
        h[4] = 0x21; h[5] = 0x12; h[6] = 0xA4; h[7] = 0x42;
        memcpy(h + 8, self->slots[node->owner].txid_prefix, 8);
        h[16] = (unsigned char)(counter >> 24);
        h[17] = (unsigned char)(counter >> 16);
        h[18] = (unsigned char)(counter >> 8);
        h[19] = (unsigned char)counter;
        size_t attribute = xor_address_attribute(&node->key.at, h, h + 20);
        unsigned char *d = h + 20 + attribute;
        d[0] = 0x00;
        d[1] = 0x13;
        d[2] = (unsigned char)(n >> 8);
        d[3] = (unsigned char)n;
        header_length = 20 + attribute + 4;
        size_t body = header_length - 20 + n + padding;
        h[2] = (unsigned char)(body >> 8);
        h[3] = (unsigned char)body;
    }
    forward(out, node->fd, &node->to, node->owner, 1, data, n);
    out->header_length = header_length;
    out->padding = padding;
    out->stream = stream;
}

/* -- sending ---------------------------------------------------------------- */

static const unsigned char zeros[4];

static void
send_plain(Forwarder *self, int first, int count)
{
    int i = first, end = first + count;
    while (i < end) {
        int r = sendmmsg(self->send_fd, self->smsgs + i, (unsigned int)(end - i), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* This datagram is lost, as it would be one hop later. */
            self->send_errors++;
            i++;
        } else {
            i += r;
        }
    }
}

static int
same_destination(const Forwarder *self, int a, int b)
{
    const endpoint_t *x = &self->sdestinations[a], *y = &self->sdestinations[b];
    return same_host(x, y) && x->port == y->port;
}

/* Join runs of queued datagrams to one destination, of one length (the
 * last may be shorter), into GSO sends; returns how many sends. */
static int
join(Forwarder *self, int n)
{
    int g = 0, k = 0, iovs = 0;
    while (k < n) {
        size_t size = self->slengths[k], total = size;
        int j = k + 1;
        if (size > 0 && size <= GSO_MAX_SEGMENT) {
            while (j < n && same_destination(self, j, k) && self->slengths[j] > 0
                   && self->slengths[j] <= size && total + self->slengths[j] <= GSO_MAX_TOTAL) {
                total += self->slengths[j++];
                if (self->slengths[j - 1] < size)
                    break; /* only the last segment may be shorter */
            }
        }
        struct msghdr *h = &self->gmsgs[g].msg_hdr;
        if (j - k == 1) {
            *h = self->smsgs[k].msg_hdr;
        } else {
            memset(h, 0, sizeof(*h));
            h->msg_name = &self->snames[k];
            h->msg_namelen = self->smsgs[k].msg_hdr.msg_namelen;
            h->msg_iov = &self->giov[iovs];
            for (int q = k; q < j; q++) {
                const struct msghdr *m = &self->smsgs[q].msg_hdr;
                for (size_t v = 0; v < m->msg_iovlen; v++)
                    self->giov[iovs++] = m->msg_iov[v];
            }
            h->msg_iovlen = (size_t)(&self->giov[iovs] - h->msg_iov);
            h->msg_control = self->gcontrol[g].buf;
            h->msg_controllen = sizeof(self->gcontrol[g].buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)size;
            memcpy(CMSG_DATA(c), &segment, sizeof(segment));
        }
        self->gfirst[g] = k;
        self->gcount[g] = j - k;
        g++;
        k = j;
    }
    return g;
}

static void
flush(Forwarder *self)
{
    int n = self->send_count;
    self->send_count = 0;
    if (!self->gso && self->gso_wanted && ++self->gso_off_flushes >= GSO_RETRY_FLUSHES)
        self->gso = 1;
    if (!self->gso || n < 2) {
        send_plain(self, 0, n);
        return;
    }
    int g = join(self, n);
    int i = 0;
    while (i < g) {
        int r = sendmmsg(self->send_fd, self->gmsgs + i, (unsigned int)(g - i), MSG_DONTWAIT);
        if (r >= 0) {
            for (int q = i; q < i + r; q++)
                self->gso_sends += self->gcount[q] > 1;
            i += r;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (self->gcount[i] > 1 && errno == EMSGSIZE) {
            /* A path MTU below the segment (one peer behind a small MTU):
             * this send goes one by one, the next ones are joined again. */
            send_plain(self, self->gfirst[i], self->gcount[i]);
        } else if (self->gcount[i] > 1 && errno != EAGAIN && errno != EWOULDBLOCK
                   && errno != ENOBUFS) {
            /* The kernel refused the segmentation itself (too old, or the
             * device cannot): send one by one for a while, then retry. */
            self->gso = 0;
            self->gso_off_flushes = 0;
            send_plain(self, self->gfirst[i], self->gcount[i]);
        } else {
            self->send_errors += (unsigned long long)self->gcount[i];
        }
        i++;
    }
}

/* Count a forwarded datagram for its slot, as the Python path counts. */
static void
tally(Forwarder *self, const decision_t *d)
{
    slot_t *s = &self->slots[d->slot];
    s->counters[d->to_client ? 2 : 0] += 1;
    s->counters[d->to_client ? 3 : 1] += d->counted;
}

static void
queue(Forwarder *self, const decision_t *d)
{
    if (self->send_count && (self->send_fd != d->fd || self->send_count >= self->batch))
        flush(self);
    int k = self->send_count++;
    self->send_fd = d->fd;
    sockaddr_any_t *name = &self->snames[k];
    socklen_t name_length = to_sockaddr(&d->to, name);
    self->sdestinations[k] = d->to;
    struct iovec *iov = self->siov[k];
    int parts = 0;
    if (d->header_length) {
        memcpy(self->sheaders[k], d->header, d->header_length);
        iov[parts].iov_base = self->sheaders[k];
        iov[parts++].iov_len = d->header_length;
    }
    iov[parts].iov_base = (void *)d->payload;
    iov[parts++].iov_len = d->length;
    if (d->padding) {
        iov[parts].iov_base = (void *)zeros;
        iov[parts++].iov_len = d->padding;
    }
    struct msghdr *m = &self->smsgs[k].msg_hdr;
    memset(m, 0, sizeof(*m));
    m->msg_name = name;
    m->msg_namelen = name_length;
    m->msg_iov = iov;
    m->msg_iovlen = (size_t)parts;
    self->slengths[k] = d->header_length + d->length + d->padding;
    tally(self, d);
}

/* -- stream clients -------------------------------------------------------- */

/* Hand the joined frames to their client's writer.  Called before anything
 * else runs Python (a hand-up, a slot removed), at the end of each read,
 * and before frames for another client are joined: so the writer sees
 * them in order with what the Python path writes. */
static void
stream_flush(Forwarder *self)
{
    if (self->stream_length == 0)
        return;
    PyObject *writer = self->slots[self->stream_slot].writer;
    size_t length = self->stream_length;
    int frames = self->stream_frames;
    self->stream_length = 0;
    self->stream_frames = 0;
    if (writer == NULL)
        return;
    Py_INCREF(writer);
    PyObject *r = PyObject_CallFunction(writer, "y#i", (const char *)self->stream_buffer,
                                        (Py_ssize_t)length, frames);
    if (r == NULL)
        PyErr_WriteUnraisable(writer);
    Py_XDECREF(r);
    Py_DECREF(writer);
}

/* Join a frame for a stream client (the writer gets them per read). */
static int
stream_queue(Forwarder *self, const decision_t *d)
{
    if (self->stream_length && self->stream_slot != d->slot)
        stream_flush(self);
    size_t size = d->header_length + d->length + d->padding;
    if (self->stream_length + size > self->stream_capacity) {
        size_t capacity = self->stream_capacity ? self->stream_capacity : 65536;
        while (capacity < self->stream_length + size)
            capacity *= 2;
        unsigned char *buffer = PyMem_RawRealloc(self->stream_buffer, capacity);
        if (buffer == NULL)
            return -1;
        self->stream_buffer = buffer;
        self->stream_capacity = capacity;
    }
    unsigned char *p = self->stream_buffer + self->stream_length;
    memcpy(p, d->header, d->header_length);
    memcpy(p + d->header_length, d->payload, d->length);
    memset(p + d->header_length + d->length, 0, d->padding);
    self->stream_length += size;
    self->stream_slot = d->slot;
    self->stream_frames++;
    tally(self, d);
    if (self->slots[d->slot].per_frame)
        stream_flush(self);
    return 0;
}

/* (key, (host, port), data): what forward_datagram and forward_frames
 * take; the caller releases the buffer. */
static int
parse_key_client_data(PyObject *args, int *key_fd, endpoint_t *from, Py_buffer *buffer)
{
    PyObject *client;
    if (!PyArg_ParseTuple(args, "iOy*", key_fd, &client, buffer))
        return -1;
    if (parse_address(client, from) < 0) {
        PyBuffer_Release(buffer);
        return -1;
    }
    return 0;
}

/*
 * forward_datagram(key, (host, port), data) -> whether it was forwarded
 *
 * One message a DTLS client sent, decrypted: forwarded as decide_client()
 * decides for a UDP client, or left to the caller (False).
 */
static PyObject *
forward_datagram(Forwarder *self, PyObject *args)
{
    int key_fd;
    Py_buffer buffer;
    endpoint_t from;
    if (parse_key_client_data(args, &key_fd, &from, &buffer) < 0)
        return NULL;
    decision_t d;
    decide_client(self, key_fd, buffer.buf, (size_t)buffer.len, &from, &d);
    if (d.forwarded) {
        queue(self, &d);
        flush(self);
    }
    PyBuffer_Release(&buffer);
    return PyBool_FromLong(d.forwarded);
}

/*
 * forward_frames(key, (host, port), data) -> (bytes consumed, frames)
 *
 * What a stream client's connection read, from the start of a frame:
 * forward the whole ChannelData frames (padded) and Send indications at
 * its head that entries allow, as decide_client() would one by one, and
 * stop at the first frame that is not whole or not forwarded here; the
 * caller frames the rest in Python, from the offset returned.
 */
static PyObject *
forward_frames(Forwarder *self, PyObject *args)
{
    int key_fd;
    Py_buffer buffer;
    endpoint_t from;
    if (parse_key_client_data(args, &key_fd, &from, &buffer) < 0)
        return NULL;
    const unsigned char *data = buffer.buf;
    size_t n = (size_t)buffer.len, offset = 0;
    int frames = 0;
    key_t_ key;
    make_key(&key, K_CLIENT, key_fd, -1, 0, &from);
    int32_t c = find(self, &key);
    while (c >= 0 && n - offset >= 4) {
        const unsigned char *frame = data + offset;
        size_t length = be16(frame + 2), size;
        if (frame[0] >= 0x40 && frame[0] <= 0x7F)
            size = 4 + length + ((4 - (length & 3)) & 3);
        else if (frame[0] < 0x40 && (length & 3) == 0)
            size = 20 + length;
        else
            break;
        if (size > n - offset)
            break;
        decision_t d;
        decide_client(self, key_fd, frame, size, &from, &d);
        if (!d.forwarded)
            break;
        queue(self, &d);
        offset += size;
        frames++;
    }
    flush(self);
    PyBuffer_Release(&buffer);
    return Py_BuildValue("(ni)", (Py_ssize_t)offset, frames);
}

/* -- pumping a socket ------------------------------------------------------- */

/* (host, port) as Twisted's udp.Port hands it to its protocol: the host
 * as CPython's socket module spells it (getnameinfo, NI_NUMERICHOST: a
 * scoped IPv6 address with its %interface), the flow and scope dropped. */
static PyObject *
address_of(const sockaddr_any_t *from, socklen_t length)
{
    char host[NI_MAXHOST];
    int port;
    if (from->sa.sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        if (inet_ntop(AF_INET, &from->in4.sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(from->in4.sin_port);
    } else if (from->sa.sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        int e = getnameinfo(&from->sa, length, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
        if (e != 0) {
            PyErr_Format(PyExc_OSError, "getnameinfo: %s", gai_strerror(e));
            return NULL;
        }
        port = ntohs(from->in6.sin6_port);
    } else {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(si)", host, port);
}

static PyObject *
endpoint_address(const endpoint_t *at)
{
    sockaddr_any_t name;
    socklen_t length = to_sockaddr(at, &name);
    return address_of(&name, length);
}

/*
 * pump(fd, from_peers, callback, batches) -> datagrams read
 *
 * Read up to batches x BATCH datagrams from fd, forward what entries
 * allow, and call callback(data, (host, port)) for the rest, in the order
 * they arrived (sends queued before a datagram handed up are sent before
 * Python sees it).  Reading stops after a batch in which Python was
 * called, since Python may have closed fd or changed the entries.
 * Raises OSError for an error other than "nothing to read" when it read
 * nothing (the relay's error queue: ICMP).
 */
static PyObject *
pump(Forwarder *self, PyObject *args)
{
    int fd, from_peers, batches;
    PyObject *callback;
    if (!PyArg_ParseTuple(args, "ipOi", &fd, &from_peers, &callback, &batches))
        return NULL;
    long total = 0;
    for (int round = 0; round < batches; round++) {
        for (int k = 0; k < BATCH; k++) {
            self->riov[k].iov_base = self->buffers + (size_t)k * BUFFER_SIZE;
            self->riov[k].iov_len = BUFFER_SIZE;
            memset(&self->rmsgs[k].msg_hdr, 0, sizeof(struct msghdr));
            self->rmsgs[k].msg_hdr.msg_name = &self->rnames[k];
            self->rmsgs[k].msg_hdr.msg_namelen = sizeof(self->rnames[k]);
            self->rmsgs[k].msg_hdr.msg_iov = &self->riov[k];
            self->rmsgs[k].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, self->rmsgs, (unsigned int)self->batch, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || total > 0)
                break;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        int called = 0;
        for (int k = 0; k < got; k++) {
            const unsigned char *data = self->buffers + (size_t)k * BUFFER_SIZE;
            size_t n = self->rmsgs[k].msg_len;
            const struct msghdr *h = &self->rmsgs[k].msg_hdr;
            endpoint_t from;
            decision_t d;
            d.forwarded = d.stream = 0;
            if (from_sockaddr(&self->rnames[k], h->msg_namelen, &from)
                && !(h->msg_flags & MSG_TRUNC) && n <= BUFFER_SIZE) {
                if (from_peers)
                    decide_peer(self, fd, data, n, &from, &d);
                else
                    decide_client(self, fd, data, n, &from, &d);
            }
            if (d.forwarded && d.stream) {
                if (stream_queue(self, &d) < 0)
                    self->send_errors++; /* no memory to join it: lost */
                continue;
            }
            if (d.forwarded) {
                queue(self, &d);
                continue;
            }
            PyObject *address = address_of(&self->rnames[k], h->msg_namelen);
            if (address == Py_None) {
                Py_DECREF(address);
                continue; /* no IP source: nothing to answer */
            }
            flush(self);
            stream_flush(self);
            called = 1;
            PyObject *r = NULL;
            if (address != NULL)
                r = PyObject_CallFunction(callback, "y#N", (const char *)data,
                                          (Py_ssize_t)(n > BUFFER_SIZE ? BUFFER_SIZE : n),
                                          address);
            if (r == NULL)
                PyErr_WriteUnraisable(callback);
            Py_XDECREF(r);
        }
        flush(self);
        stream_flush(self);
        total += got;
        if (called || got < self->batch)
            break;
    }
    return PyLong_FromLong(total);
}

/*
 * decide(fd, from_peers, data, (host, port)) -> None or (fd, (host, port), bytes)
 *
 * What pump would do with one datagram, without a socket: the fuzzers and
 * the tests that hold the fast path to the Python path use it.  It counts
 * as pump does.
 */
static PyObject *
decide(Forwarder *self, PyObject *args)
{
    int fd, from_peers;
    Py_buffer data;
    PyObject *source;
    endpoint_t from;
    if (!PyArg_ParseTuple(args, "ipy*O", &fd, &from_peers, &data, &source))
        return NULL;
    if (parse_address(source, &from) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    decision_t d;
    if (from_peers)
        decide_peer(self, fd, data.buf, (size_t)data.len, &from, &d);
    else
        decide_client(self, fd, data.buf, (size_t)data.len, &from, &d);
    if (!d.forwarded) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    tally(self, &d);
    size_t total = d.header_length + d.length + d.padding;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        memcpy(p, d.header, d.header_length);
        memcpy(p + d.header_length, d.payload, d.length);
        memset(p + d.header_length + d.length, 0, d.padding);
    }
    PyBuffer_Release(&data);
    if (out == NULL)
        return NULL;
    PyObject *to = endpoint_address(&d.to);
    if (to == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(iNN)", d.fd, to, out);
}

static PyObject *
send_errors(Forwarder *self, PyObject *noargs)
{
    return PyLong_FromUnsignedLongLong(self->send_errors);
}

static PyObject *
gso_on(Forwarder *self, PyObject *noargs)
{
    return PyBool_FromLong(self->gso);
}

static PyObject *
gso_sends(Forwarder *self, PyObject *noargs)
{
    return PyLong_FromUnsignedLongLong(self->gso_sends);
}

static PyObject *
tune(Forwarder *self, PyObject *args)
{
    int batch, gso;
    if (!PyArg_ParseTuple(args, "ip", &batch, &gso))
        return NULL;
    if (batch < 1 || batch > BATCH) {
        PyErr_Format(PyExc_ValueError, "a batch is 1 to %d datagrams", BATCH);
        return NULL;
    }
    flush(self);
    self->batch = batch;
    self->gso = self->gso_wanted = gso;
    Py_RETURN_NONE;
}

/* -- the type --------------------------------------------------------------- */

static PyObject *
forwarder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Forwarder *self = (Forwarder *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->mask = 63;
    self->buckets = PyMem_Malloc(sizeof(int32_t) * 64);
    self->node_capacity = 64;
    self->nodes = PyMem_Calloc(64, sizeof(node_t));
    self->slot_capacity = 16;
    self->slots = PyMem_Calloc(16, sizeof(slot_t));
    self->batch = BATCH;
    self->gso = self->gso_wanted = 1;
    /* Pages are only touched as datagrams that large arrive. */
    self->buffers = PyMem_RawMalloc((size_t)BATCH * BUFFER_SIZE);
    if (!self->buckets || !self->nodes || !self->slots || !self->buffers) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < 64; i++)
        self->buckets[i] = -1;
    self->free_node = -1;
    for (int32_t i = 63; i >= 0; i--) {
        self->nodes[i].next = self->free_node;
        self->free_node = i;
    }
    return (PyObject *)self;
}

static int
forwarder_init(Forwarder *self, PyObject *args, PyObject *kwargs)
{
    Py_buffer key;
    static char *names[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*", names, &key))
        return -1;
    if (key.len != 16) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "the hash key is 16 random bytes");
        return -1;
    }
    if (self->node_count) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_RuntimeError, "the key cannot change under entries");
        return -1;
    }
    memcpy(&self->k0, key.buf, 8);
    memcpy(&self->k1, (char *)key.buf + 8, 8);
    PyBuffer_Release(&key);
    return 0;
}

static void
forwarder_dealloc(Forwarder *self)
{
    PyMem_Free(self->buckets);
    PyMem_Free(self->nodes);
    for (int32_t i = 0; i < self->slot_capacity; i++)
        Py_CLEAR(self->slots[i].writer);
    PyMem_Free(self->slots);
    PyMem_RawFree(self->buffers);
    PyMem_RawFree(self->stream_buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef forwarder_methods[] = {
    {"add_allocation", (PyCFunction)add_allocation, METH_VARARGS,
     "add_allocation(listen_fd or key, (host, port), txid_prefix[, writer[, joined]]) -> slot; "
     "a stream or DTLS client's writer(data, frames) gets what peers send it, joined and "
     "padded or one message a call"},
    {"forward_datagram", (PyCFunction)forward_datagram, METH_VARARGS,
     "forward_datagram(session key, (host, port), message) -> whether it was forwarded"},
    {"forward_frames", (PyCFunction)forward_frames, METH_VARARGS,
     "forward_frames(stream key, (host, port), data) -> (bytes consumed, frames forwarded)"},
    {"remove_allocation", (PyCFunction)remove_allocation, METH_VARARGS,
     "remove_allocation(slot) -> counters not yet taken; every entry of the slot goes"},
    {"take_counters", (PyCFunction)take_counters, METH_VARARGS,
     "take_counters(slot) -> (to peers packets, bytes, to client packets, bytes) since last"},
    {"add_channel", (PyCFunction)add_channel, METH_VARARGS,
     "add_channel(slot, channel, relay_fd, (host, port))"},
    {"add_send", (PyCFunction)add_send, METH_VARARGS, "add_send(slot, relay_fd, (host, port)) -> False past the slot's bound"},
    {"add_peer", (PyCFunction)add_peer, METH_VARARGS,
     "add_peer(slot, relay_fd, peer, listen_fd, client, channel or 0 for Data indications) -> "
     "False past the slot's bound"},
    {"remove_channel", (PyCFunction)remove_channel, METH_VARARGS, "remove_channel(slot, channel)"},
    {"remove_peer", (PyCFunction)remove_peer, METH_VARARGS, "remove_peer(slot, relay_fd, peer)"},
    {"remove_host", (PyCFunction)remove_host, METH_VARARGS,
     "remove_host(slot, host): its Send and peer entries"},
    {"remove_relay", (PyCFunction)remove_relay, METH_VARARGS,
     "remove_relay(slot, relay_fd): every entry through that relay"},
    {"clear_sends", (PyCFunction)clear_sends, METH_NOARGS, "clear_sends(): every Send entry"},
    {"entry_count", (PyCFunction)entry_count, METH_NOARGS, "entry_count() -> entries held"},
    {"entry_capacity", (PyCFunction)entry_capacity, METH_NOARGS,
     "entry_capacity() -> entries the table has memory for"},
    {"send_errors", (PyCFunction)send_errors, METH_NOARGS, "send_errors() -> datagrams lost"},
    {"gso_on", (PyCFunction)gso_on, METH_NOARGS, "gso_on() -> whether sends are joined now"},
    {"gso_sends", (PyCFunction)gso_sends, METH_NOARGS,
     "gso_sends() -> sends that carried several datagrams (UDP GSO)"},
    {"tune", (PyCFunction)tune, METH_VARARGS,
     "tune(batch, gso): datagrams per recvmmsg and sendmmsg (1-BATCH), and UDP GSO"},
    {"pump", (PyCFunction)pump, METH_VARARGS, "pump(fd, from_peers, callback, batches) -> read"},
    {"decide", (PyCFunction)decide, METH_VARARGS,
     "decide(fd, from_peers, data, (host, port)) -> None or (fd, (host, port), bytes)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "txturn.fastpath._forwarder.Forwarder",
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Forwarding entries and the loop that reads sockets through them.",
    .tp_new = forwarder_new,
    .tp_init = (initproc)forwarder_init,
    .tp_dealloc = (destructor)forwarder_dealloc,
    .tp_methods = forwarder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "txturn.fastpath._forwarder",
    .m_doc = "The compiled fast path of the UDP relay, IPv4 and IPv6 (see txturn.fastpath.forwarding).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__forwarder(void)
{
    make_crc_table();
    if (PyType_Ready(&ForwarderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ForwarderType);
    if (PyModule_AddObject(m, "Forwarder", (PyObject *)&ForwarderType) < 0) {
        Py_DECREF(&ForwarderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "BATCH", BATCH);
    return m;
}
