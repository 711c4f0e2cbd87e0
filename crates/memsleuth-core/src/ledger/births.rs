//! Births and activations: where each live block was born, for its retained bytes
//! (docs/design.md, Figures).
//!
//! An activation is one push of a frame on a thread's stack, linked to the activation below it;
//! a call is one call of a profiled function (a generator's spans all its resumes, so several
//! activations may share it). A birth is an (owner node, activation) pair: the block table
//! stores its 32-bit id, shared by the blocks born alike, which keeps a slot at 16 bytes.
//! Walking the node's chain of lines and the activation's chain of frames together gives, for
//! each line a block was born under, the call that line belonged to; a call stays live until it
//! returns, including while a generator or coroutine is suspended. Births, activations and
//! calls are counted and recycled once nothing refers to them.

use super::execs::NodeId;
use super::registry::LineId;
use super::{Hot, Ledger};

/// Where live blocks were born; what the block table stores for each.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct BirthId(pub(crate) u32);

impl BirthId {
    /// Blocks allocated while no profiled line is active on the thread (owner `NodeId::OUTSIDE`,
    /// no activation). Permanent: never counted or recycled.
    pub const OUTSIDE: BirthId = BirthId(0);
    /// Blocks the profiler caused (owner `NodeId::PROFILER`): they never reach a figure.
    /// Permanent: never counted or recycled.
    pub const PROFILER: BirthId = BirthId(1);
    /// The first id of a counted, recyclable birth.
    const FIRST_COUNTED: u32 = 2;

    /// Whether this birth is counted and recycled (not one of the permanent two).
    #[inline(always)]
    pub(super) fn is_counted(self) -> bool {
        self.0 >= Self::FIRST_COUNTED
    }

    #[inline(always)]
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// One push of a frame on a thread's stack.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ActId(pub(crate) u32);

impl ActId {
    /// No activation: no profiled frame is on the thread (or below the bottom frame).
    pub const NONE: ActId = ActId(u32::MAX);

    #[inline(always)]
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// One call of a profiled function.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct CallId(pub(crate) u32);

impl CallId {
    #[inline(always)]
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// One push of a frame on a thread's stack.
#[derive(Clone, Copy, Debug)]
pub(super) struct Activation {
    call: CallId,
    /// The activation of the frame below on the stack, or `ActId::NONE`.
    parent: ActId,
    /// Births in it, child activations, and 1 while it is on the stack.
    refs: u32,
}

/// Where live blocks were allocated: the owner node and the frame activation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Birth {
    node: NodeId,
    act: ActId,
    /// The node's line (its innermost), if it is an interned node: what was live at the
    /// tracked peak is counted by it (`peak`).
    line: Option<LineId>,
    /// Live blocks with this birth, plus 1 while its node holds it (`Node::birth`).
    refs: u32,
}

/// One call of a profiled function: a generator's spans all its resumes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    live: bool,
    /// Activations of this call.
    refs: u32,
}

impl Ledger {
    /// A block of `size` bytes born as `birth` is freed: each line it was born under whose call
    /// has not returned yet counts it as freed before return (once per line, at the outermost
    /// node carrying it), and the birth loses the block's reference.
    #[inline(always)]
    pub(super) fn freed_with_birth(&mut self, birth: BirthId, size: u64) {
        let Birth { node, act, line, .. } = self.births[birth.index()];
        if let Some(line) = line {
            self.live_by_line.free(line, size);
        }
        self.charge_freed_before_return(node, act, size);
        self.release_birth(birth);
    }

    /// A counted block of `size` bytes born as `birth` leaves the figures without being freed
    /// by the program (the profiler's, or freed behind the hooks' back): its birth loses the
    /// block's reference, and its line the bytes live.
    pub(super) fn forget_block(&mut self, birth: BirthId, size: u64) {
        if let Some(line) = self.births.get(birth.index()).and_then(|b| b.line) {
            self.live_by_line.free(line, size);
        }
        self.release_birth(birth);
    }

    fn charge_freed_before_return(&mut self, mut n: NodeId, mut act: ActId, size: u64) {
        if !n.is_real() {
            return;
        }
        let mut act_depth = self.node(n).depth;
        while n.is_real() && act != ActId::NONE {
            let node = *self.node(n);
            while act_depth > node.depth && act != ActId::NONE {
                act = self.acts[act.index()].parent;
                act_depth -= 1;
            }
            if node.outermost && act != ActId::NONE && self.calls[self.acts[act.index()].call.index()].live {
                self.line_stats_mut(node.line).freed_before_return += size;
            }
            n = node.parent;
        }
    }

    /// Whether `birth` is in use for blocks owned by `node` in activation `act` (a recycled one
    /// matches nothing).
    #[inline(always)]
    pub(super) fn is_birth_of(&self, birth: BirthId, node: NodeId, act: ActId) -> bool {
        self.births.get(birth.index()).is_some_and(|b| b.node == node && b.act == act)
    }

    /// The birth for a block of `size` bytes allocated now, with a reference added for the
    /// block, and its bytes live on the birth's line.
    #[inline(always)]
    pub(super) fn birth_of_new_block(&mut self, hot: &mut Hot, size: u64) -> BirthId {
        if !self.is_birth_of(hot.birth, hot.owner, hot.act) {
            hot.birth = self.birth_for(hot.owner, hot.act);
        }
        if hot.birth.is_counted() {
            let b = &mut self.births[hot.birth.index()];
            b.refs += 1;
            if let Some(line) = b.line {
                self.live_by_line.alloc(line, size);
            }
        }
        hot.birth
    }

    /// The birth for blocks owned by `owner` in activation `act`: a permanent one, the one the
    /// node made last if it still matches, or a new one. A node holds a reference to the birth it
    /// made last, so a line that allocates and frees in turn does not make and recycle a birth
    /// each time; the next activation's birth for the node replaces it.
    fn birth_for(&mut self, owner: NodeId, act: ActId) -> BirthId {
        if self.births.is_empty() {
            for node in [NodeId::OUTSIDE, NodeId::PROFILER] {
                self.births.push(Birth { node, act: ActId::NONE, line: None, refs: 0 });
            }
        }
        if !owner.is_real() && act == ActId::NONE {
            return if owner == NodeId::PROFILER { BirthId::PROFILER } else { BirthId::OUTSIDE };
        }
        let node = owner.is_real().then(|| owner.index()).filter(|&n| n < self.nodes.len());
        if let Some(n) = node {
            let last = self.nodes[n].birth;
            if self.is_birth_of(last, owner, act) {
                return last;
            }
        }
        let made = Birth { node: owner, act, line: node.map(|n| self.nodes[n].line), refs: 0 };
        let id = match self.free_births.pop() {
            Some(id) => {
                self.births[id.index()] = made;
                id
            }
            None => {
                self.births.push(made);
                BirthId((self.births.len() - 1) as u32)
            }
        };
        self.hold(act);
        if let Some(n) = node {
            self.births[id.index()].refs += 1;
            let replaced = std::mem::replace(&mut self.nodes[n].birth, id);
            self.release_birth(replaced);
        }
        id
    }

    /// Drops a reference to a birth; one nothing refers to is recycled, releasing its activation.
    pub(super) fn release_birth(&mut self, birth: BirthId) {
        if !birth.is_counted() {
            return;
        }
        let b = &mut self.births[birth.index()];
        b.refs -= 1;
        if b.refs == 0 {
            let act = b.act;
            b.node = NodeId::DEAD;
            self.free_births.push(birth);
            self.release(act);
        }
    }

    /// Births and activations in use (made and not recycled).
    #[cfg(test)]
    pub(crate) fn births_and_activations_in_use(&self) -> (usize, usize) {
        (self.births.len() - self.free_births.len(), self.acts.len() - self.free_acts.len())
    }

    /// A new reference to activation `act` (a birth in it, a child, the stack).
    #[inline(always)]
    fn hold(&mut self, act: ActId) {
        if let Some(a) = self.acts.get_mut(act.index()) {
            a.refs += 1;
        }
    }

    /// Drops a reference; an activation nothing refers to is recycled, releasing its parent and
    /// its call (recycled too once it has returned and no activation is left).
    pub(super) fn release(&mut self, mut act: ActId) {
        while let Some(a) = self.acts.get_mut(act.index()) {
            a.refs -= 1;
            if a.refs > 0 {
                return;
            }
            let (call, parent) = (a.call, a.parent);
            self.free_acts.push(act);
            let c = &mut self.calls[call.index()];
            c.refs -= 1;
            if c.refs == 0 && !c.live {
                self.free_calls.push(call);
            }
            act = parent;
        }
    }

    pub(super) fn new_call(&mut self) -> CallId {
        let call = Call { live: true, refs: 0 };
        match self.free_calls.pop() {
            Some(id) => {
                self.calls[id.index()] = call;
                id
            }
            None => {
                self.calls.push(call);
                CallId((self.calls.len() - 1) as u32)
            }
        }
    }

    pub(super) fn new_activation(&mut self, call: CallId, parent: ActId) -> ActId {
        self.calls[call.index()].refs += 1;
        self.hold(parent);
        let act = Activation { call, parent, refs: 1 };
        match self.free_acts.pop() {
            Some(id) => {
                self.acts[id.index()] = act;
                id
            }
            None => {
                self.acts.push(act);
                ActId((self.acts.len() - 1) as u32)
            }
        }
    }

    /// A call returned: its blocks freed from now on were freed after the return.
    pub(super) fn end_call(&mut self, call: CallId) {
        let c = &mut self.calls[call.index()];
        c.live = false;
        if c.refs == 0 {
            self.free_calls.push(call);
        }
    }
}
