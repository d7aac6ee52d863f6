//! `pagestream-workload`: the self-verifying memory workload (see `pagestream::workload`).

fn main() {
    pagestream::workload::main_from(std::env::args_os());
}
