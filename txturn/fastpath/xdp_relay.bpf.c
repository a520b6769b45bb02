// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * txturn's kernel data path (--xdp): relays UDP ChannelData of
 * established channels in the XDP hook, before the socket layer.
 *
 * The Python core decides; this program only forwards what the entries
 * it wrote allow, and everything else goes up to the sockets unchanged
 * (XDP_PASS), where the user-space fast path and the Python path handle
 * it as without XDP:
 *
 *  - a client's ChannelData to the server's address, on a bound channel:
 *    its 4-byte header stripped, sent from the relay address to the peer
 *    (channel_entries);
 *  - a peer's datagram to a relay address, from the peer of a channel:
 *    prefixed with the channel's header, sent from the server's address to
 *    the client (peer_entries).
 *
 * IPv4 without options or fragments and IPv6 without extension headers,
 * client and peer of the same family.  Anything else goes up: STUN, Send
 * and Data indications, unknown channels, ChannelData whose length is not
 * exactly what the datagram holds (the Python path trims padding and
 * drops what is short), an IPv6 datagram without checksum, a datagram
 * that would not fit the route's MTU, or a route through an interface
 * outside --xdp or whose neighbour is not yet resolved.
 *
 * The way out is the kernel's own route and neighbour (bpf_fib_lookup,
 * from the interface the datagram came in on, which is why the kernel
 * asks that forwarding be on for it): XDP_TX back out of that interface,
 * or a redirect to another --xdp interface.
 *
 * Checksums are updated, not recomputed (RFC 1624): the payload does not
 * move within its 16-bit words, so the UDP checksum changes only by what
 * the rewrite changes.  A datagram that arrives with a wrong UDP checksum
 * leaves with one still wrong, and the receiver's kernel drops it as the
 * server's would have.
 *
 * Every length is checked against data_end before use (the verifier
 * insists as well).
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define MAX_ENTRIES 262144

/* Addresses are 16 bytes, IPv4 in the first 4 (network order, the rest
 * zero).  Ports and channel numbers are in network order.  The layouts
 * are mirrored by ctypes structures in txturn/fastpath/xdp.py. */

struct channel_key {
	__u32 client[4];
	__u32 server[4];
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u8 family;
	__u8 pad;
};

struct channel_value {
	__u32 relay[4];
	__u32 peer[4];
	__u16 relay_port;
	__u16 peer_port;
	__u32 owner;
	__u64 packets;
	__u64 bytes;
};

struct peer_key {
	__u32 peer[4];
	__u32 relay[4];
	__u16 peer_port;
	__u16 relay_port;
	__u8 family;
	__u8 pad[3];
};

struct peer_value {
	__u32 client[4];
	__u32 server[4];
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
	__u32 owner;
	__u32 pad2;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct channel_key);
	__type(value, struct channel_value);
} channel_entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct peer_value);
} peer_entries SEC(".maps");

/* The interfaces of --xdp: the only ones a datagram is redirected to;
 * egress_ok holds the same ifindexes, asked before a datagram is changed
 * (a redirect to an interface outside the devmap would pass the changed
 * datagram up). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} egress_ok SEC(".maps");

enum {
	STAT_TO_PEERS,		/* datagrams relayed client -> peer */
	STAT_TO_CLIENTS,	/* datagrams relayed peer -> client */
	STAT_NO_ROUTE,		/* matched, but the route was not ours to use */
	STAT_TOO_BIG,		/* matched, but over the route's MTU */
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);
	if (n)
		*n += 1;
}

/* One's complement arithmetic (RFC 1071, RFC 1624). */
static __always_inline __u32 add16(__u32 sum, __u16 word)
{
	return sum + word;
}

static __always_inline __u32 sub16(__u32 sum, __u16 word)
{
	return sum + (__u16)~word;
}

static __always_inline __u32 add_address(__u32 sum, const __u32 *a, int words)
{
	for (int i = 0; i < words; i++) {
		sum = add16(sum, a[i] & 0xffff);
		sum = add16(sum, a[i] >> 16);
	}
	return sum;
}

static __always_inline __u32 sub_address(__u32 sum, const __u32 *a, int words)
{
	for (int i = 0; i < words; i++) {
		sum = sub16(sum, a[i] & 0xffff);
		sum = sub16(sum, a[i] >> 16);
	}
	return sum;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u16 ipv4_checksum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return ~fold(sum);
}

/* What a datagram's rewrite needs of its old headers. */
struct seen {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u16 udp_len;		/* network order */
	__u16 check;
	__u16 channel;		/* network order, client -> peer only */
	__u16 length;		/* network order, client -> peer only */
	__u16 payload;		/* host order: bytes after the UDP header */
	__u8 family;
	__u8 tos;
};

/* The route from src to dst: on success, the MACs are written into eth
 * and the action returned; otherwise XDP_PASS (or a count). */
static __always_inline int route(struct xdp_md *ctx, struct ethhdr *eth, __u8 family,
				 const __u32 *src, const __u32 *dst, __u16 tot_len)
{
	struct bpf_fib_lookup fib = {};
	fib.family = family;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = tot_len;
	fib.ifindex = ctx->ingress_ifindex;
	if (family == AF_INET) {
		fib.ipv4_src = src[0];
		fib.ipv4_dst = dst[0];
	} else {
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count(STAT_TOO_BIG);
		return -1;
	}
	__u32 out = fib.ifindex;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS
	    || (out != ctx->ingress_ifindex && !bpf_map_lookup_elem(&egress_ok, &out))) {
		count(STAT_NO_ROUTE);
		return -1;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return (int)fib.ifindex;
}

static __always_inline int send(struct xdp_md *ctx, int ifindex)
{
	if ((__u32)ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&egress, ifindex, XDP_PASS);
}

/* Parse the IP and UDP headers at data + 14 into seen; 0 when it is not a
 * datagram this program may relay. */
static __always_inline int parse(void *data, void *end, __u16 proto, struct seen *s)
{
	struct udphdr *udp;
	__u16 ip_payload;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return 0;
		if (ip->ihl != 5 || ip->version != 4 || ip->protocol != IPPROTO_UDP)
			return 0;
		if (ip->frag_off & bpf_htons(0x3fff))
			return 0;
		__u16 total = bpf_ntohs(ip->tot_len);
		if (total < sizeof(*ip) + sizeof(*udp))
			return 0;
		ip_payload = total - sizeof(*ip);
		s->family = AF_INET;
		s->src[0] = ip->saddr;
		s->dst[0] = ip->daddr;
		s->tos = ip->tos;
		udp = (void *)(ip + 1);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return 0;
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
			return 0;
		ip_payload = bpf_ntohs(ip6->payload_len);
		s->family = AF_INET6;
		__builtin_memcpy(s->src, &ip6->saddr, 16);
		__builtin_memcpy(s->dst, &ip6->daddr, 16);
		s->tos = 0;
		udp = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(udp + 1) > end)
		return 0;
	__u16 udp_len = bpf_ntohs(udp->len);
	/* The IP and UDP lengths agree, and the datagram is all there. */
	if (udp_len != ip_payload || udp_len < sizeof(*udp))
		return 0;
	if ((void *)udp + udp_len > end)
		return 0;
	if (s->family == AF_INET6 && udp->check == 0)
		return 0;
	s->sport = udp->source;
	s->dport = udp->dest;
	s->udp_len = udp->len;
	s->check = udp->check;
	s->payload = udp_len - sizeof(*udp);
	if (s->payload >= 4) {
		__u16 *head = (void *)(udp + 1);
		if ((void *)(head + 2) > end)
			return 0;
		s->channel = head[0];
		s->length = head[1];
	}
	return 1;
}

/* Write new IP and UDP headers after eth for a datagram of payload bytes
 * from src:sport to dst:dport, and its UDP checksum. */
static __always_inline int write_headers(void *data, void *end, const struct seen *s,
					 const __u32 *src, __u16 sport, const __u32 *dst,
					 __u16 dport, __u16 payload, __u16 check)
{
	struct udphdr *udp;
	__u16 udp_len = payload + sizeof(*udp);
	if (s->family == AF_INET) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return 0;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(udp_len + sizeof(*ip));
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000);	/* DF */
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->saddr = src[0];
		ip->daddr = dst[0];
		ip->check = ipv4_checksum(ip);
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return 0;
		*(__u32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > end)
		return 0;
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(udp_len);
	udp->check = check;
	return 1;
}

/* The UDP checksum after a rewrite: the old one, less the old pseudo
 * header, ports, length and (removed) channel header words, plus the new
 * ones (RFC 1624 eqn. 3).  0 (IPv4 without checksum) stays 0. */
static __always_inline __u16 new_check(const struct seen *s, int words, const __u32 *src,
				       __u16 sport, const __u32 *dst, __u16 dport,
				       __u16 new_len, int removed_header, __u16 channel,
				       __u16 length)
{
	if (s->check == 0)
		return 0;
	__u32 sum = (__u16)~s->check;
	sum = sub_address(sum, s->src, words);
	sum = sub_address(sum, s->dst, words);
	sum = sub16(sum, s->sport);
	sum = sub16(sum, s->dport);
	sum = sub16(sum, s->udp_len);	/* in the pseudo header */
	sum = sub16(sum, s->udp_len);	/* in the UDP header */
	sum = add_address(sum, src, words);
	sum = add_address(sum, dst, words);
	sum = add16(sum, sport);
	sum = add16(sum, dport);
	sum = add16(sum, bpf_htons(new_len));
	sum = add16(sum, bpf_htons(new_len));
	if (removed_header) {
		sum = sub16(sum, channel);
		sum = sub16(sum, length);
	} else {
		sum = add16(sum, channel);
		sum = add16(sum, length);
	}
	__u16 check = ~fold(sum);
	return check ? check : 0xffff;
}

static __always_inline int ip_header_size(__u8 family)
{
	return family == AF_INET ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

/* A client's ChannelData on a bound channel: to the peer. */
static __always_inline int from_client(struct xdp_md *ctx, struct seen *s)
{
	if (s->payload < 4)
		return XDP_PASS;
	__u16 channel = bpf_ntohs(s->channel);
	if (channel < 0x4000 || channel > 0x7fff)
		return XDP_PASS;
	if (bpf_ntohs(s->length) != s->payload - 4)
		return XDP_PASS;
	struct channel_key key = {};
	key.family = s->family;
	__builtin_memcpy(key.client, s->src, 16);
	__builtin_memcpy(key.server, s->dst, 16);
	key.client_port = s->sport;
	key.server_port = s->dport;
	key.channel = s->channel;
	struct channel_value *entry = bpf_map_lookup_elem(&channel_entries, &key);
	if (!entry)
		return XDP_PASS;
	int words = s->family == AF_INET ? 1 : 4;
	__u16 payload = s->payload - 4;
	__u16 tot_len = payload + sizeof(struct udphdr) + ip_header_size(s->family);
	__u32 relay[4], peer[4];
	__builtin_memcpy(relay, entry->relay, 16);
	__builtin_memcpy(peer, entry->peer, 16);
	__u16 relay_port = entry->relay_port, peer_port = entry->peer_port;
	struct ethhdr *eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_PASS;
	/* The route first: nothing is changed unless the datagram can go. */
	struct ethhdr out = {};
	out.h_proto = eth->h_proto;
	int ifindex = route(ctx, &out, s->family, relay, peer, tot_len);
	if (ifindex < 0)
		return XDP_PASS;
	__u16 check = new_check(s, words, relay, relay_port, peer, peer_port, payload + 8, 1,
				s->channel, s->length);
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;	/* cannot happen: the frame only lost its front */
	__builtin_memcpy(eth, &out, sizeof(out));
	if (!write_headers(data, end, s, relay, relay_port, peer, peer_port, payload, check))
		return XDP_DROP;
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, payload);
	count(STAT_TO_PEERS);
	return send(ctx, ifindex);
}

/* A peer's datagram to a relay address, on a channel: to the client. */
static __always_inline int from_peer(struct xdp_md *ctx, struct seen *s)
{
	struct peer_key key = {};
	key.family = s->family;
	__builtin_memcpy(key.peer, s->src, 16);
	__builtin_memcpy(key.relay, s->dst, 16);
	key.peer_port = s->sport;
	key.relay_port = s->dport;
	struct peer_value *entry = bpf_map_lookup_elem(&peer_entries, &key);
	if (!entry)
		return XDP_PASS;
	int words = s->family == AF_INET ? 1 : 4;
	__u16 payload = s->payload;
	if (payload > 0xffff - 4 - 8 - 40)
		return XDP_PASS;
	__u16 tot_len = payload + 4 + sizeof(struct udphdr) + ip_header_size(s->family);
	__u32 client[4], server[4];
	__builtin_memcpy(client, entry->client, 16);
	__builtin_memcpy(server, entry->server, 16);
	__u16 client_port = entry->client_port, server_port = entry->server_port;
	__u16 channel = entry->channel, length = bpf_htons(payload);
	struct ethhdr *eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_PASS;
	struct ethhdr out = {};
	out.h_proto = eth->h_proto;
	int ifindex = route(ctx, &out, s->family, server, client, tot_len);
	if (ifindex < 0)
		return XDP_PASS;
	__u16 check = new_check(s, words, server, server_port, client, client_port,
				payload + 4 + 8, 0, channel, length);
	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &out, sizeof(out));
	if (!write_headers(data, end, s, server, server_port, client, client_port, payload + 4,
			   check))
		return XDP_DROP;
	__u16 *head = data + sizeof(struct ethhdr) + ip_header_size(s->family)
		      + sizeof(struct udphdr);
	if ((void *)(head + 2) > end)
		return XDP_DROP;
	head[0] = channel;
	head[1] = length;
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, payload);
	count(STAT_TO_CLIENTS);
	return send(ctx, ifindex);
}

SEC("xdp")
int txturn_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	struct seen s = {};
	if (!parse(data, end, eth->h_proto, &s))
		return XDP_PASS;
	/* ChannelData starts with 0b01; a peer's datagram may too, so the
	 * client entries are asked first only when it could be ChannelData. */
	if (s.payload >= 4 && (bpf_ntohs(s.channel) & 0xc000) == 0x4000) {
		int action = from_client(ctx, &s);
		if (action != XDP_PASS)
			return action;
		/* The front of the frame is unchanged when from_client passes. */
	}
	return from_peer(ctx, &s);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
