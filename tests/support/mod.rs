pub mod fd_case;
