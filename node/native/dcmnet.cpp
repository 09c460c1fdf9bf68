// ainode's DICOM receive path on dcmtk's libdcmnet (node/native_listener.py drives it).
//
// Python accepts each TCP connection (bind address, port sharing, slot limits)
// and hands its file descriptor to serve_connection(), which runs the whole
// association in C++ with Python's GIL released: A-ASSOCIATE negotiation, PDU
// and DIMSE decoding, C-ECHO, and the responses. What needs the node's
// decisions goes back to Python, the GIL taken only for that call:
//   on_association(calling_ae, called_ae, peer_address, tls_subject | None)
//       -> None | str (refusal); tls_subject: the verified client certificate's
//       subject (RFC 2253, as `openssl x509 -subject -nameopt RFC2253` prints it)
//   on_store(data, transfer_syntax, sop_class, sop_instance, move_originator)
//       -> (status, comment | None); data: the dataset's bytes as they arrived
//   on_report(event_type_id, sop_class, sop_instance, data, transfer_syntax) -> status
// serve_connection returns (admitted, aborted, tls_error | None) when the
// association ends. With DICOM TLS (configure_tls() makes the context, once),
// the handshake runs where dcmnet receives the association, bounded by the
// ACSE timeout.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcostrma.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/dimse.h"
#include "dcmtk/dcmnet/dul.h"
#include "dcmtk/dcmtls/tlslayer.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace {

// --- the dataset's bytes, as received -------------------------------------

struct StringConsumer : public DcmConsumer {
  std::string data;
  OFBool good() const override { return OFTrue; }
  OFCondition status() const override { return EC_Normal; }
  OFBool isFlushed() const override { return OFTrue; }
  offile_off_t avail() const override { return 1 << 30; }
  offile_off_t write(const void* buf, offile_off_t len) override {
    data.append(static_cast<const char*>(buf), static_cast<size_t>(len));
    return len;
  }
  void flush() override {}
};

struct ConsumerHolder {
  StringConsumer consumer;
};

// DcmOutputStream's constructor is protected: a stream into a string.
class StringStream : private ConsumerHolder, public DcmOutputStream {
 public:
  StringStream() : ConsumerHolder(), DcmOutputStream(&consumer) {}
  std::string& data() { return consumer.data; }
};

// --- state shared by all connections ----------------------------------------

// dcmExternalSocketHandle is a process-wide global that dcmnet reads when a
// network is initialised and when an association's connection is made: from
// setting it until dcmnet has made the connection object (Unlocking, below)
// this lock is held. The TLS handshake and the A-ASSOCIATE-RQ come after,
// outside it: a caller that stops half-way holds up nobody else.
std::mutex g_handshake;
thread_local std::unique_lock<std::mutex>* t_handshake = nullptr;

// A transport layer that releases g_handshake once dcmnet has taken the socket
// from dcmExternalSocketHandle and made its connection object of it.
template <class Layer>
class Unlocking : public Layer {
 public:
  using Layer::Layer;
  DcmTransportConnection* createConnection(DcmNativeSocketType sock, OFBool secure) override {
    DcmTransportConnection* made = Layer::createConnection(sock, secure);
    if (t_handshake != nullptr && t_handshake->owns_lock()) t_handshake->unlock();
    return made;
  }
};
Unlocking<DcmTransportLayer> g_plain;
// The name of the capsule that holds a DcmTLSTransportLayer (configure_tls).
const char* const kTlsCapsule = "ainode.dcmnet.tls";
std::mutex g_active_lock;
std::set<int> g_active;  // sockets of running associations (abort_all shuts them down)

// What the node accepts: abstract syntax -> transfer syntaxes, and the SOP
// classes a peer may propose in the SCP role (storage commitment reports).
std::mutex g_contexts_lock;
std::map<std::string, std::set<std::string>> g_contexts;
std::set<std::string> g_scp_role;

struct Settings {
  std::string ae_title;
  long max_pdu;
  int acse_timeout;
  int network_timeout;
  int dimse_timeout;
  bool busy;  // every slot taken: answer A-ASSOCIATE-RJ (transient, local limit)
  DcmTLSTransportLayer* tls;  // nullptr: plain DICOM
  PyObject* on_association;
  PyObject* on_store;
  PyObject* on_report;
};

void warn(const char* what, const OFCondition& cond) {
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject* logging = PyImport_ImportModule("logging");
  if (logging) {
    PyObject* logger = PyObject_CallMethod(logging, "getLogger", "s", "node.native_listener");
    if (logger) {
      PyObject* r = PyObject_CallMethod(logger, "warning", "sss", "%s: %s", what, cond.text());
      Py_XDECREF(r);
      Py_DECREF(logger);
    }
    Py_DECREF(logging);
  }
  PyErr_Clear();
  PyGILState_Release(g);
}

// Python errors in a callback are logged by Python; here they only mean "fail".
void report_python_error() {
  // The error is taken first: no Python call may run while it is still set.
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  PyObject* logging = PyImport_ImportModule("logging");
  if (logging) {
    PyObject* logger = PyObject_CallMethod(logging, "getLogger", "s", "node.native_listener");
    if (logger && value) {
      PyObject* info = PyTuple_Pack(3, type ? type : Py_None, value, tb ? tb : Py_None);
      PyObject* kwargs = Py_BuildValue("{s:O}", "exc_info", info);
      PyObject* args = Py_BuildValue("(s)", "callback from the DICOM front end failed");
      PyObject* method = PyObject_GetAttrString(logger, "error");
      if (method && args && kwargs) Py_XDECREF(PyObject_Call(method, args, kwargs));
      Py_XDECREF(method);
      Py_XDECREF(args);
      Py_XDECREF(kwargs);
      Py_XDECREF(info);
    }
    Py_XDECREF(logger);
    Py_DECREF(logging);
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  PyErr_Clear();
}

// --- association negotiation ------------------------------------------------

void negotiate(T_ASC_Parameters* params) {
  std::lock_guard<std::mutex> l(g_contexts_lock);
  int count = ASC_countPresentationContexts(params);
  for (int i = 0; i < count; ++i) {
    T_ASC_PresentationContext pc;
    ASC_getPresentationContext(params, i, &pc);
    auto found = g_contexts.find(pc.abstractSyntax);
    if (found == g_contexts.end()) {
      ASC_refusePresentationContext(params, pc.presentationContextID,
                                    ASC_P_ABSTRACTSYNTAXNOTSUPPORTED);
      continue;
    }
    // The requestor's first proposed transfer syntax that the node takes.
    const char* chosen = nullptr;
    for (int t = 0; t < pc.transferSyntaxCount && !chosen; ++t)
      if (found->second.count(pc.proposedTransferSyntaxes[t])) chosen = pc.proposedTransferSyntaxes[t];
    if (!chosen) {
      ASC_refusePresentationContext(params, pc.presentationContextID,
                                    ASC_P_TRANSFERSYNTAXESNOTSUPPORTED);
      continue;
    }
    T_ASC_SC_ROLE role = ASC_SC_ROLE_DEFAULT;
    if (pc.proposedRole == ASC_SC_ROLE_SCP || pc.proposedRole == ASC_SC_ROLE_SCUSCP)
      role = g_scp_role.count(pc.abstractSyntax) ? ASC_SC_ROLE_SCP : ASC_SC_ROLE_DEFAULT;
    ASC_acceptPresentationContext(params, pc.presentationContextID, chosen, role, OFTrue);
  }
}

void reject(T_ASC_Association* assoc, T_ASC_RejectParametersResult result,
            T_ASC_RejectParametersSource source, T_ASC_RejectParametersReason reason) {
  T_ASC_RejectParameters rej = {result, source, reason};
  ASC_rejectAssociation(assoc, &rej);
}

// The verified client certificate's subject in RFC 2253 form; "" if none was presented
// (a presented certificate that fails verification ends the handshake before this).
std::string peer_subject(T_ASC_Association* assoc) {
  unsigned long n = ASC_getPeerCertificateLength(assoc);
  if (n == 0) return "";
  std::vector<unsigned char> der(n);
  if (ASC_getPeerCertificate(assoc, der.data(), n) != n) return "";
  const unsigned char* p = der.data();
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(n));
  if (cert == nullptr) return "";
  std::string out;
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio && X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
    char* text = nullptr;
    long len = BIO_get_mem_data(bio, &text);
    if (text && len > 0) out.assign(text, static_cast<size_t>(len));
  }
  BIO_free(bio);
  X509_free(cert);
  return out;
}

// Python's decision on the caller: true to admit.
bool admitted(const Settings& s, T_ASC_Association* assoc) {
  std::string subject = s.tls ? peer_subject(assoc) : "";
  PyGILState_STATE g = PyGILState_Ensure();
  bool ok = false;
  PyObject* r = PyObject_CallFunction(s.on_association, "sssz",
                                      assoc->params->DULparams.callingAPTitle,
                                      assoc->params->DULparams.calledAPTitle,
                                      assoc->params->DULparams.callingPresentationAddress,
                                      subject.empty() ? nullptr : subject.c_str());
  if (r == nullptr) {
    report_python_error();  // a failing decision refuses (fails closed)
  } else {
    ok = (r == Py_None);
    Py_DECREF(r);
  }
  PyGILState_Release(g);
  return ok;
}

// --- DIMSE services ---------------------------------------------------------

const char* transfer_syntax_of(T_ASC_Association* assoc, T_ASC_PresentationContextID id,
                               T_ASC_PresentationContext* pc) {
  if (ASC_findAcceptedPresentationContext(assoc->params, id, pc).bad()) return "";
  return pc->acceptedTransferSyntax;
}

bool receive_data(T_ASC_Association* assoc, const Settings& s, std::string& out) {
  StringStream stream;
  T_ASC_PresentationContextID data_id = 0;
  OFCondition cond = DIMSE_receiveDataSetInFile(assoc, DIMSE_NONBLOCKING, s.dimse_timeout,
                                                &data_id, &stream, nullptr, nullptr);
  if (cond.bad()) {
    warn("dataset not received", cond);
    return false;
  }
  out.swap(stream.data());
  return true;
}

// (status, comment) from Python's answer; a failing callback: processing failure.
Uint16 call_store(const Settings& s, T_ASC_Association* assoc, T_DIMSE_C_StoreRQ& rq,
                  T_ASC_PresentationContextID pres_id, std::string& data, std::string& comment) {
  T_ASC_PresentationContext pc;
  const char* ts = transfer_syntax_of(assoc, pres_id, &pc);
  const char* originator =
      (rq.opts & O_STORE_MOVEORIGINATORAETITLE) ? rq.MoveOriginatorApplicationEntityTitle : "";
  PyGILState_STATE g = PyGILState_Ensure();
  Uint16 status = 0x0110;
  PyObject* bytes = PyBytes_FromStringAndSize(data.data(), static_cast<Py_ssize_t>(data.size()));
  std::string().swap(data);  // the bytes live in Python now
  PyObject* r = bytes ? PyObject_CallFunction(s.on_store, "Ossss", bytes, ts,
                                              rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID,
                                              originator)
                      : nullptr;
  Py_XDECREF(bytes);
  if (r == nullptr) {
    report_python_error();
    comment = "unexpected error in ainode, see its log";
  } else {
    PyObject* st = PyTuple_Check(r) && PyTuple_Size(r) == 2 ? PyTuple_GetItem(r, 0) : nullptr;
    PyObject* cm = st ? PyTuple_GetItem(r, 1) : nullptr;
    if (st && PyLong_Check(st)) status = static_cast<Uint16>(PyLong_AsLong(st));
    if (cm && PyUnicode_Check(cm)) {
      const char* text = PyUnicode_AsUTF8(cm);
      if (text) comment = text;
    }
    Py_DECREF(r);
  }
  PyErr_Clear();
  PyGILState_Release(g);
  return status;
}

bool store(const Settings& s, T_ASC_Association* assoc, T_ASC_PresentationContextID pres_id,
           T_DIMSE_C_StoreRQ& rq) {
  std::string data;
  if (!receive_data(assoc, s, data)) return false;
  std::string comment;
  Uint16 status = call_store(s, assoc, rq, pres_id, data, comment);
  T_DIMSE_C_StoreRSP rsp;
  memset(&rsp, 0, sizeof(rsp));
  rsp.MessageIDBeingRespondedTo = rq.MessageID;
  rsp.DimseStatus = status;
  rsp.DataSetType = DIMSE_DATASET_NULL;
  OFStandard::strlcpy(rsp.AffectedSOPClassUID, rq.AffectedSOPClassUID, sizeof(rsp.AffectedSOPClassUID));
  OFStandard::strlcpy(rsp.AffectedSOPInstanceUID, rq.AffectedSOPInstanceUID,
                      sizeof(rsp.AffectedSOPInstanceUID));
  rsp.opts = O_STORE_AFFECTEDSOPCLASSUID | O_STORE_AFFECTEDSOPINSTANCEUID;
  DcmDataset detail;
  if (!comment.empty()) detail.putAndInsertString(DCM_ErrorComment, comment.substr(0, 64).c_str());
  OFCondition cond =
      DIMSE_sendStoreResponse(assoc, pres_id, &rq, &rsp, comment.empty() ? nullptr : &detail);
  if (cond.bad()) warn("C-STORE response not sent", cond);
  return cond.good();
}

bool report(const Settings& s, T_ASC_Association* assoc, T_ASC_PresentationContextID pres_id,
            T_DIMSE_N_EventReportRQ& rq) {
  std::string data;
  if (rq.DataSetType != DIMSE_DATASET_NULL && !receive_data(assoc, s, data)) return false;
  T_ASC_PresentationContext pc;
  const char* ts = transfer_syntax_of(assoc, pres_id, &pc);
  Uint16 status = 0x0110;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject* bytes = PyBytes_FromStringAndSize(data.data(), static_cast<Py_ssize_t>(data.size()));
  PyObject* r = bytes ? PyObject_CallFunction(s.on_report, "issOs", int(rq.EventTypeID),
                                              rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID,
                                              bytes, ts)
                      : nullptr;
  Py_XDECREF(bytes);
  if (r == nullptr) {
    report_python_error();
  } else {
    if (PyLong_Check(r)) status = static_cast<Uint16>(PyLong_AsLong(r));
    Py_DECREF(r);
  }
  PyErr_Clear();
  PyGILState_Release(g);
  T_DIMSE_Message rsp;
  memset(&rsp, 0, sizeof(rsp));
  rsp.CommandField = DIMSE_N_EVENT_REPORT_RSP;
  T_DIMSE_N_EventReportRSP& m = rsp.msg.NEventReportRSP;
  m.MessageIDBeingRespondedTo = rq.MessageID;
  m.DimseStatus = status;
  m.DataSetType = DIMSE_DATASET_NULL;
  m.EventTypeID = rq.EventTypeID;
  OFStandard::strlcpy(m.AffectedSOPClassUID, rq.AffectedSOPClassUID, sizeof(m.AffectedSOPClassUID));
  OFStandard::strlcpy(m.AffectedSOPInstanceUID, rq.AffectedSOPInstanceUID,
                      sizeof(m.AffectedSOPInstanceUID));
  m.opts = O_NEVENTREPORT_AFFECTEDSOPCLASSUID | O_NEVENTREPORT_AFFECTEDSOPINSTANCEUID |
           O_NEVENTREPORT_EVENTTYPEID;
  OFCondition cond =
      DIMSE_sendMessageUsingMemoryData(assoc, pres_id, &rsp, nullptr, nullptr, nullptr, nullptr);
  if (cond.bad()) warn("N-EVENT-REPORT response not sent", cond);
  return cond.good();
}

// The association's message loop; false if it ended in an abort.
bool serve_messages(const Settings& s, T_ASC_Association* assoc) {
  for (;;) {
    T_ASC_PresentationContextID pres_id = 0;
    T_DIMSE_Message msg;
    OFCondition cond = DIMSE_receiveCommand(assoc, DIMSE_NONBLOCKING, s.network_timeout, &pres_id,
                                            &msg, nullptr);
    if (cond == DUL_PEERREQUESTEDRELEASE) {
      ASC_acknowledgeRelease(assoc);
      return true;
    }
    if (cond == DUL_PEERABORTEDASSOCIATION) return false;
    if (cond.bad()) {
      if (cond != DIMSE_NODATAAVAILABLE) warn("association aborted", cond);
      ASC_abortAssociation(assoc);
      return false;
    }
    bool ok = false;
    switch (msg.CommandField) {
      case DIMSE_C_ECHO_RQ:
        ok = DIMSE_sendEchoResponse(assoc, pres_id, &msg.msg.CEchoRQ, STATUS_Success, nullptr).good();
        break;
      case DIMSE_C_STORE_RQ:
        ok = store(s, assoc, pres_id, msg.msg.CStoreRQ);
        break;
      case DIMSE_N_EVENT_REPORT_RQ:
        ok = report(s, assoc, pres_id, msg.msg.NEventReportRQ);
        break;
      default:
        warn("unsupported DIMSE command: association aborted", DIMSE_BADCOMMANDTYPE);
        break;
    }
    if (!ok) {
      ASC_abortAssociation(assoc);
      return false;
    }
  }
}

// Forget a socket before it is closed: abort_all must never shut down a reused number.
// (g_active holds the caller's descriptor, which stays open until the association ends.)
void forget(int fd) {
  std::lock_guard<std::mutex> l(g_active_lock);
  g_active.erase(fd);
}

// Socket timeouts for the TLS handshake: dcmtls runs it as one blocking SSL_accept,
// which a caller that stops mid-handshake would otherwise hold forever.
void set_io_timeout(int fd, int seconds) {
  struct timeval tv = {seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Close ``theirs`` (the descriptor dcmnet was given) unless dcmnet closed it already:
// if it did, the number may be another connection's by now, so it is closed only while
// it is still the same socket as ``fd`` (which the caller holds open).
void close_if_still_ours(int theirs, int fd) {
  struct stat a, b;
  if (fstat(theirs, &a) == 0 && fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    close(theirs);
}

// Receive the A-ASSOCIATE-RQ on ``fd`` (TLS handshake first, if configured); nullptr if
// none came. dcmnet gets a duplicate of ``fd``, which it owns (and closes) from then on;
// ``fd`` stays the caller's. ``tls_error``: why the handshake failed, if it did.
T_ASC_Association* receive_association(int fd, const Settings& s, T_ASC_Network** net,
                                       std::string& tls_error) {
  // Wait for the caller's first bytes outside the lock: a connection that stays
  // silent holds up nobody else's handshake (it is closed after acse_timeout).
  struct pollfd pfd = {fd, POLLIN, 0};
  int ready;
  do {
    ready = poll(&pfd, 1, s.acse_timeout * 1000);
  } while (ready < 0 && errno == EINTR);
  if (ready <= 0) return nullptr;
  int theirs = dup(fd);
  if (theirs < 0) return nullptr;
  if (s.tls) set_io_timeout(fd, s.acse_timeout);
  OFCondition cond;
  T_ASC_Association* assoc = nullptr;
  {
    std::unique_lock<std::mutex> l(g_handshake);
    t_handshake = &l;
    dcmExternalSocketHandle.set(theirs);
    cond = ASC_initializeNetwork(NET_ACCEPTOR, 0, s.acse_timeout, net);
    if (cond.good())
      cond = ASC_setTransportLayer(*net, s.tls ? static_cast<DcmTransportLayer*>(s.tls) : &g_plain, 0);
    if (cond.good())
      cond = ASC_receiveAssociation(*net, &assoc, s.max_pdu, nullptr, nullptr,
                                    s.tls ? OFTrue : OFFalse, DUL_NOBLOCK, s.acse_timeout);
    t_handshake = nullptr;
  }  // released here if dcmnet failed before it made the connection
  if (s.tls) set_io_timeout(fd, 0);
  if (cond.bad()) {
    if (cond.module() == OFM_dcmtls) tls_error = cond.text();
    if (assoc) {
      ASC_dropSCPAssociation(assoc);
      ASC_destroyAssociation(&assoc);
    } else {
      close_if_still_ours(theirs, fd);
    }
    return nullptr;
  }
  return assoc;
}

PyObject* serve_connection(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"fd",           "ae_title",        "max_pdu",
                             "acse_timeout", "network_timeout", "dimse_timeout",
                             "busy",         "on_association",  "on_store",
                             "on_report",    "tls",             nullptr};
  int fd, acse, network, dimse, busy;
  const char* ae;
  long max_pdu;
  PyObject* tls = Py_None;
  Settings s;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "isliiipOOO|O", const_cast<char**>(kw), &fd,
                                   &ae, &max_pdu, &acse, &network, &dimse, &busy,
                                   &s.on_association, &s.on_store, &s.on_report, &tls))
    return nullptr;
  s.tls = nullptr;
  if (tls != Py_None) {
    s.tls = static_cast<DcmTLSTransportLayer*>(PyCapsule_GetPointer(tls, kTlsCapsule));
    if (s.tls == nullptr) {
      close(fd);
      return nullptr;
    }
  }
  s.ae_title = ae;
  s.max_pdu = max_pdu;
  s.acse_timeout = acse;
  s.network_timeout = network;
  s.dimse_timeout = dimse;
  s.busy = busy != 0;
  bool was_admitted = false;
  bool clean = false;
  std::string tls_error;
  Py_BEGIN_ALLOW_THREADS
  {
    std::lock_guard<std::mutex> l(g_active_lock);
    g_active.insert(fd);
  }
  T_ASC_Network* net = nullptr;
  T_ASC_Association* assoc = receive_association(fd, s, &net, tls_error);
  if (assoc != nullptr) {
    if (s.busy) {
      reject(assoc, ASC_RESULT_REJECTEDTRANSIENT, ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED,
             ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED);
    } else if (strcmp(assoc->params->DULparams.calledAPTitle, s.ae_title.c_str()) != 0) {
      reject(assoc, ASC_RESULT_REJECTEDPERMANENT, ASC_SOURCE_SERVICEUSER,
             ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED);
    } else if (!admitted(s, assoc)) {
      reject(assoc, ASC_RESULT_REJECTEDPERMANENT, ASC_SOURCE_SERVICEUSER,
             ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED);
    } else {
      was_admitted = true;
      negotiate(assoc->params);
      OFCondition cond = ASC_acknowledgeAssociation(assoc);
      if (cond.good()) {
        clean = serve_messages(s, assoc);
      } else {
        warn("A-ASSOCIATE-AC not sent", cond);
      }
    }
    ASC_dropSCPAssociation(assoc);
    ASC_destroyAssociation(&assoc);
  }
  if (net) ASC_dropNetwork(&net);
  forget(fd);
  close(fd);  // dcmnet closed its duplicate: the connection ends here
  Py_END_ALLOW_THREADS
  return Py_BuildValue("(OOz)", was_admitted ? Py_True : Py_False,
                       was_admitted && !clean ? Py_True : Py_False,
                       tls_error.empty() ? nullptr : tls_error.c_str());
}

PyObject* abort_all(PyObject*, PyObject*) {
  int n = 0;
  {
    std::lock_guard<std::mutex> l(g_active_lock);
    for (int fd : g_active) {
      shutdown(fd, SHUT_RDWR);
      ++n;
    }
  }
  return PyLong_FromLong(n);
}

// --- DICOM TLS ----------------------------------------------------------------

void free_tls(PyObject* capsule) {
  delete static_cast<DcmTLSTransportLayer*>(PyCapsule_GetPointer(capsule, kTlsCapsule));
}

PyObject* tls_failure(DcmTLSTransportLayer* layer, const std::string& message) {
  delete layer;
  PyErr_SetString(PyExc_ValueError, message.c_str());
  return nullptr;
}

// configure_tls(certificate, private_key, ca_bundle | None, require_client_certificate,
// ciphers) -> the server's TLS context, for serve_connection(tls=...). TLS 1.2 or newer,
// the TLS 1.2 suites given (TLS 1.3's all qualify), no compression; client certificates
// verified against the CA bundle only (optional unless required), none asked without it.
PyObject* configure_tls(PyObject*, PyObject* args) {
  const char *cert, *key, *ca, *ciphers;
  int require;
  if (!PyArg_ParseTuple(args, "sszps", &cert, &key, &ca, &require, &ciphers)) return nullptr;
  auto* layer = new Unlocking<DcmTLSTransportLayer>(NET_ACCEPTOR, nullptr, OFTrue);
  SSL_CTX* ctx = layer->getNativeHandle();
  if (ctx == nullptr) return tls_failure(layer, "OpenSSL made no TLS context");
  if (layer->setPrivateKeyFile(key, DCF_Filetype_PEM).bad())
    return tls_failure(layer, std::string("private_key: ") + key + " is not a usable PEM key");
  if (layer->setCertificateFile(cert, DCF_Filetype_PEM).bad())
    return tls_failure(layer, std::string("certificate: ") + cert + " is not a usable PEM certificate");
  if (!layer->checkPrivateKeyMatchesCertificate())
    return tls_failure(layer, std::string("certificate/private_key: ") + cert + " and " + key +
                                  " do not make a usable pair");
  if (ca != nullptr && layer->addTrustedCertificateFile(ca, DCF_Filetype_PEM).bad())
    return tls_failure(layer, std::string("ca_bundle: ") + ca + " holds no usable CA certificate");
  layer->setCertificateVerification(ca == nullptr ? DCV_ignoreCertificate
                                    : require      ? DCV_requireCertificate
                                                   : DCV_checkCertificate);
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
      !SSL_CTX_set_cipher_list(ctx, ciphers))
    return tls_failure(layer, std::string("no usable TLS 1.2 cipher suite in ") + ciphers);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
  PyObject* capsule = PyCapsule_New(layer, kTlsCapsule, free_tls);
  if (capsule == nullptr) delete layer;
  return capsule;
}

PyObject* configure(PyObject*, PyObject* args) {
  PyObject *contexts, *scp_role;
  if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &contexts, &PySet_Type, &scp_role))
    return nullptr;
  std::map<std::string, std::set<std::string>> parsed;
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(contexts, &pos, &key, &value)) {
    const char* abstract = PyUnicode_AsUTF8(key);
    if (!abstract) return nullptr;
    PyObject* it = PyObject_GetIter(value);
    if (!it) return nullptr;
    std::set<std::string>& syntaxes = parsed[abstract];
    while (PyObject* item = PyIter_Next(it)) {
      const char* ts = PyUnicode_AsUTF8(item);
      if (ts) syntaxes.insert(ts);
      Py_DECREF(item);
      if (!ts) {
        Py_DECREF(it);
        return nullptr;
      }
    }
    Py_DECREF(it);
  }
  std::set<std::string> roles;
  PyObject* it = PyObject_GetIter(scp_role);
  while (PyObject* item = PyIter_Next(it)) {
    const char* uid = PyUnicode_AsUTF8(item);
    if (uid) roles.insert(uid);
    Py_DECREF(item);
  }
  Py_DECREF(it);
  if (PyErr_Occurred()) return nullptr;
  std::lock_guard<std::mutex> l(g_contexts_lock);
  g_contexts.swap(parsed);
  g_scp_role.swap(roles);
  // dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set (each response
  // would wait for the peer's delayed ACK, ~40 ms); an explicit setting stands.
  setenv("TCP_NODELAY", "1", 0);
  // The caller's address as a number: no reverse DNS lookup per association.
  dcmDisableGethostbyaddr.set(OFTrue);
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(contexts: dict[abstract, iterable[transfer syntax]], scp_role: set[abstract])"},
    {"serve_connection",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(serve_connection)),
     METH_VARARGS | METH_KEYWORDS,
     "Serve one accepted connection (fd, owned from now on); returns (admitted, aborted, "
     "tls_error)."},
    {"configure_tls", configure_tls, METH_VARARGS,
     "configure_tls(certificate, private_key, ca_bundle, require_client_certificate, ciphers) "
     "-> TLS context for serve_connection(tls=...); ValueError naming the file that fails"},
    {"abort_all", abort_all, METH_NOARGS,
     "Shut down the socket of every running association; returns how many."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_dcmnet", "ainode's receive path on dcmtk", -1,
                       kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__dcmnet() { return PyModule_Create(&kModule); }
