# Run by `cmake --install` (install(CODE) in ../CMakeLists.txt sets LOCKEXT_VERSION,
# LOCKEXT_LIBDIR, LOCKEXT_INCLUDEDIR, LOCKEXT_PC_IN and LOCKEXT_PC_OUT): writes
# lockext-client.pc for the prefix being installed to (`--prefix X` puts X into it), into
# <libdir>/pkgconfig under DESTDIR, then runs ldconfig for a real install into a system
# prefix.
set(prefix "${CMAKE_INSTALL_PREFIX}")
foreach(_dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${LOCKEXT_${_dir}}")
    set(_pc_${_dir} "${LOCKEXT_${_dir}}")
  else()
    set(_pc_${_dir} "\${prefix}/${LOCKEXT_${_dir}}")
  endif()
endforeach()
set(pc_libdir "${_pc_LIBDIR}")
set(pc_includedir "${_pc_INCLUDEDIR}")
configure_file("${LOCKEXT_PC_IN}" "${LOCKEXT_PC_OUT}" @ONLY)
if(IS_ABSOLUTE "${LOCKEXT_LIBDIR}")
  set(_pc_dest "${LOCKEXT_LIBDIR}/pkgconfig")
else()
  set(_pc_dest "${CMAKE_INSTALL_PREFIX}/${LOCKEXT_LIBDIR}/pkgconfig")
endif()
file(INSTALL DESTINATION "${_pc_dest}" TYPE FILE FILES "${LOCKEXT_PC_OUT}")
if("$ENV{DESTDIR}" STREQUAL "" AND EXISTS /sbin/ldconfig
   AND ("${CMAKE_INSTALL_PREFIX}" STREQUAL "/usr/local" OR "${CMAKE_INSTALL_PREFIX}" STREQUAL "/usr"))
  execute_process(COMMAND /sbin/ldconfig)
endif()
